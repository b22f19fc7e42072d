"""``cra serve`` in a subprocess: it serves, and SIGTERM drains in-flight requests and the trace."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cra_agents.trace import open_store

KEY = "serve-key-0123456789abcdef"
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cra_agents.cli", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_healthy(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"cra serve exited: {process.stdout.read() if process.stdout else ''}"
            )
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("cra serve did not become healthy")


def test_sigterm_finishes_in_flight_requests_and_flushes_the_store(
    github_ops: Path, tmp_path: Path
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "traces.db"
    config = tmp_path / "server.toml"
    config.write_text("request_timeout = 20.0\n[rate_limit]\nper_second = 0\n")
    env = {**os.environ, "CRA_API_KEYS": f"ops:{KEY}"}
    env.pop("CRA_AGENTS_STORE", None)
    process = _start(
        [
            "--atlas",
            str(github_ops),
            "--port",
            str(port),
            "--store",
            f"sqlite://{db}",
            "--config",
            str(config),
        ],
        env,
    )
    try:
        _wait_healthy(url, process)
        quick = httpx.post(
            url + "/v1/sessions",
            json={"agent_id": "bot", "goal": "before"},
            headers={"X-API-Key": KEY},
        )
        assert quick.status_code == 201
        sending = threading.Event()
        result: dict[str, Any] = {}

        def body() -> Iterator[bytes]:
            yield b'{"agent_id": "bot",'
            sending.set()
            time.sleep(1.5)  # SIGTERM arrives while this request is in flight
            yield b' "goal": "in flight"}'

        def slow() -> None:
            try:
                result["response"] = httpx.post(
                    url + "/v1/sessions",
                    content=body(),
                    headers={"X-API-Key": KEY, "Content-Type": "application/json"},
                    timeout=30,
                )
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                result["error"] = exc

        thread = threading.Thread(target=slow)
        thread.start()
        assert sending.wait(10)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert "error" not in result, result.get("error")
        response = result["response"]
        assert response.status_code == 201, response.text
        assert process.wait(30) == 0
        output = process.stdout.read() if process.stdout else ""
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/v1/health", timeout=1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    store = open_store(f"sqlite://{db}")
    try:
        for session_id in (quick.json()["session_id"], response.json()["session_id"]):
            events = store.read(session_id)
            assert [e.event_type for e in events] == ["session.started"], output
    finally:
        store.close()


def test_serve_without_the_extra_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import cra_agents.server
    from cra_agents.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # not installed
    monkeypatch.delitem(sys.modules, "cra_agents.server._run", raising=False)
    # Not cached in the package (vars(), not delattr: hasattr would import it lazily).
    monkeypatch.delitem(vars(cra_agents.server), "serve", raising=False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "uvicorn" in err and "cra-agents[server]" in err


def test_serve_runs_uvicorn_and_closes_the_runtime(
    github_ops: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from cra_agents.cli import main
    from cra_agents.server._run import GracefulServer

    seen: dict[str, Any] = {}

    def run(self: Any) -> None:
        seen["config"] = self.config
        seen["runtime"] = self.config.app.state.runtime

    monkeypatch.setattr(GracefulServer, "run", run)
    monkeypatch.delenv("CRA_API_KEYS", raising=False)
    logger = logging.getLogger("cra_agents.server")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    args = ["serve", "--atlas", str(github_ops), "--port", "9999", "--store", "memory://"]
    assert main(args) == 0
    assert logger.handlers  # the access log goes to stderr
    assert seen["config"].port == 9999 and seen["config"].host == "127.0.0.1"
    assert seen["runtime"].closed
    assert [a.atlas_id for a in seen["runtime"].atlases] == ["com.example.github-ops"]
    assert "no API key or JWT" in capsys.readouterr().err
