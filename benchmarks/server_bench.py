"""`make bench`: the HTTP server's speed (issue 16, "Speed").

Rows, each measured in this run against a server in a subprocess (its own interpreter and GIL,
one uvicorn worker, access log off, 127.0.0.1):

- ``POST /v1/resolve``, sequential on one keep-alive connection, with ``httpx.Client`` (the
  project's client library) and with a minimal raw HTTP/1.1 client (a socket, requests prepared
  before the clock starts, the response read by its ``Content-Length``): median, p99 and mean
  in ms. Target: median <= 0.6 ms with the raw client.
- ``POST /v1/resolve`` from 4 concurrent raw clients (threads of this process, one keep-alive
  connection each) for a fixed time: resolves/s. Target >= 2,500.
- The bare framework floor, the same three measurements of a trivial route returning a constant
  (``GET /floor`` of a bare FastAPI app served the same way): what no route can go below.

The server under test is ``cra_agents.server.create_app`` when the server package has it (an
API key from ``CRA_API_KEYS``); otherwise a stand-in app of this file (``POST /v1/sessions`` and
``POST /v1/resolve`` calling ``Runtime.resolve``, no auth), and the output says so. The runtime
resolves against the ``github-ops`` example atlas and records to SQLite (``async``, the default
writer). Every request carries a new ``request_id`` and a current timestamp (the runtime refuses
replays), prepared before the timed loop.

Environment: ``CRA_BENCH_SCALE`` multiplies the counts and durations (default 1; 0.2 for a quick
look). A benchmark reports; it never fails ``make bench`` on timing (exit status 0).

Run with ``--serve MODE PORT STORE`` it is the server subprocess itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from _timing import load_average
from fastapi import FastAPI, Request, Response

SCALE = float(os.environ.get("CRA_BENCH_SCALE", "1"))
API_KEY = "bench-key-0123456789abcdef"  # at least 16 characters
MEDIAN_TARGET_MS = 0.6
THROUGHPUT_TARGET = 2500.0
WARMUP = 500


# -- the server subprocess -----------------------------------------------------------------------


def _has_create_app() -> bool:
    if importlib.util.find_spec("cra_agents.server") is None:
        return False
    import cra_agents.server as server

    return hasattr(server, "create_app")


def _project_app(runtime: Any) -> Any:
    """The project's app (``create_app``), configured from the environment."""
    # By name: this file is type-checked on branches where the server package has no app yet.
    package = importlib.import_module("cra_agents.server")
    config_class = package.ServerConfig
    config = None
    for name in ("from_env", "load"):
        factory = getattr(config_class, name, None)
        if factory is not None:
            with contextlib.suppress(TypeError):
                config = factory()
                break
    return package.create_app(runtime, config if config is not None else config_class())


def _stand_in_app(runtime: Any) -> Any:
    """``POST /v1/sessions`` and ``POST /v1/resolve`` over the runtime: no auth, no limits."""
    from cra_agents import CRAError

    app = FastAPI()

    @app.post("/v1/sessions")
    async def create_session(request: Request) -> Response:
        body = await request.json()
        info = runtime.create_session(body["agent_id"], body["goal"])
        return Response(json.dumps({"session_id": info.session_id}), 201, None, "application/json")

    @app.post("/v1/resolve")
    async def resolve(request: Request) -> Response:
        body = await request.body()
        try:
            resolution = runtime.resolve(json.loads(body))
        except CRAError as exc:
            return Response(
                json.dumps(exc.to_error_response()), exc.status, None, "application/json"
            )
        return Response(
            resolution.model_dump_json(exclude_none=True), 200, None, "application/json"
        )

    return app


def _floor_app() -> Any:
    app = FastAPI()
    constant = b'{"status":"ok"}'

    @app.get("/floor")
    async def floor() -> Response:
        return Response(constant, 200, None, "application/json")

    return app


def serve(mode: str, port: int, store: str) -> None:
    """The server subprocess: ``mode`` is ``project``, ``stand-in`` or ``floor``."""
    import uvicorn

    runtime = None
    if mode == "floor":
        app = _floor_app()
    else:
        from cra_agents import Runtime
        from cra_agents.examples import atlas_path

        runtime = Runtime([atlas_path("github-ops")], store=store)
        app = _project_app(runtime) if mode == "project" else _stand_in_app(runtime)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    if runtime is not None:
        runtime.close()


# -- clients ----------------------------------------------------------------------------------


class RawClient:
    """HTTP/1.1 keep-alive on a socket: send prepared bytes, read the response by length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self, data: bytes) -> tuple[int, bytes]:
        self.sock.sendall(data)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            rest += chunk
        body, self.buffer = rest[:length], rest[length:]
        return status, body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def _http(method: str, path: str, port: int, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Target:
    """What a client sends: a factory of fresh request bodies (or a constant GET)."""

    def __init__(self, port: int, session: tuple[str, str] | None) -> None:
        self.port = port
        self.session = session

    def body(self) -> bytes:
        from cra_agents._clock import format_timestamp
        from cra_agents._ids import new_id

        if self.session is None:
            raise RuntimeError("the floor has no session")
        agent_id, session_id = self.session
        return json.dumps(
            {
                "carp_version": "1.0",
                "request_id": new_id(),
                "timestamp": format_timestamp(time.time_ns()),
                "operation": "resolve",
                "requester": {"agent_id": agent_id, "session_id": session_id},
                "task": {"goal": "Triage new issues", "risk_tier": "low"},
            },
            separators=(",", ":"),
        ).encode()

    def raw(self, n: int) -> list[bytes]:
        """``n`` prepared requests."""
        if self.session is None:
            request = _http("GET", "/floor", self.port)
            return [request] * n
        return [_http("POST", "/v1/resolve", self.port, self.body()) for _ in range(n)]


def _timed_raw(target: Target, n: int) -> list[int]:
    client = RawClient(target.port)
    try:
        for request in target.raw(WARMUP):
            _check(*client.request(request))
        prepared = target.raw(n)
        out = []
        clock = time.perf_counter_ns
        for request in prepared:
            start = clock()
            status, body = client.request(request)
            out.append(clock() - start)
            _check(status, body)
        return out
    finally:
        client.close()


def _timed_httpx(target: Target, n: int) -> list[int]:
    import httpx

    base = f"http://127.0.0.1:{target.port}"
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    with httpx.Client(base_url=base, headers=headers) as client:

        def send(body: bytes | None) -> httpx.Response:
            if body is None:
                return client.get("/floor")
            return client.post("/v1/resolve", content=body)

        def bodies(count: int) -> list[bytes | None]:
            return [None if target.session is None else target.body() for _ in range(count)]

        for body in bodies(WARMUP):
            response = send(body)
            _check(response.status_code, response.content)
        prepared = bodies(n)
        out = []
        clock = time.perf_counter_ns
        for body in prepared:
            start = clock()
            response = send(body)
            out.append(clock() - start)
            _check(response.status_code, response.content)
        return out


def _throughput(target: Target, clients: int, seconds: float) -> tuple[float, int]:
    """Requests/s of ``clients`` raw keep-alive clients for ``seconds``; and the errors."""
    per_client = max(int(4000 * seconds / clients), 100)  # enough for 4,000/s; refilled if not
    counts = [0] * clients
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()

    def run(index: int) -> None:
        client = RawClient(target.port)
        prepared = target.raw(per_client)
        try:
            barrier.wait()
            while not stop.is_set():
                for request in prepared:
                    status, _ = client.request(request)
                    counts[index] += 1
                    errors[index] += status != 200
                    if stop.is_set():
                        break
                else:
                    prepared = target.raw(per_client)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return sum(counts) / elapsed, sum(errors)


def _check(status: int, body: bytes) -> None:
    if status != 200:
        raise RuntimeError(f"the server answered {status}: {body[:300]!r}")


# -- orchestration --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def server(mode: str, store: str) -> Iterator[int]:
    port = _free_port()
    env = dict(os.environ, CRA_API_KEYS=API_KEY, CRA_RATE_LIMIT_PER_SECOND="0")
    process = subprocess.Popen(  # noqa: S603 - this script, this interpreter
        [sys.executable, __file__, "--serve", mode, str(port), store], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the {mode} server exited with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {mode} server did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _session(port: int) -> tuple[str, str]:
    client = RawClient(port)
    try:
        body = json.dumps({"agent_id": "bench-bot", "goal": "Triage new issues"}).encode()
        status, answer = client.request(_http("POST", "/v1/sessions", port, body))
    finally:
        client.close()
    if status not in (200, 201):
        raise RuntimeError(f"creating a session answered {status}: {answer[:300]!r}")
    return "bench-bot", str(json.loads(answer)["session_id"])


def _ms(samples_ns: list[int]) -> tuple[float, float, float]:
    ordered = sorted(samples_ns)
    return (
        statistics.median(ordered) / 1e6,
        ordered[int(len(ordered) * 0.99)] / 1e6,
        statistics.fmean(ordered) / 1e6,
    )


Row = tuple[str, float, float, float, float | None]


def measure(label: str, target: Target, n: int, seconds: float) -> list[Row]:
    rows: list[Row] = []
    for client, timed in (("httpx.Client", _timed_httpx), ("raw socket", _timed_raw)):
        median, p99, mean = _ms(timed(target, n))
        rows.append((f"{label}, sequential, {client}", median, p99, mean, None))
    rate, errors = _throughput(target, 4, seconds)
    if errors:
        print(f"  ({label}: {errors} non-200 answers during the throughput run)")
    rows.append((f"{label}, 4 concurrent raw clients", float("nan"), 0, 0, rate))
    return rows


def main() -> int:
    import uvicorn

    project = _has_create_app()
    mode = "project" if project else "stand-in"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    print(
        f"python {sys.version.split()[0]}, uvicorn {uvicorn.__version__} ({http}, {loop}), "
        f"1 worker, {os.cpu_count()} cores, {load_average()}"
    )
    if project:
        print("server: cra_agents.server.create_app (the project's server)")
    else:
        print(
            "server: STAND-IN (cra_agents.server.create_app is not on this branch): a FastAPI "
            "app of this file, POST /v1/resolve -> Runtime.resolve, no auth or limits"
        )
    n = max(int(5000 * SCALE), 200)
    seconds = max(5.0 * SCALE, 1.0)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        with server(mode, f"sqlite://{tmp}/traces.db") as port:
            target = Target(port, _session(port))
            rows += measure("resolve", target, n, seconds)
        with server("floor", "") as port:
            rows += measure("floor (constant route)", Target(port, None), n, seconds)
    print(f"{'':48} {'median ms':>10} {'p99 ms':>8} {'mean ms':>8} {'per s':>8}")
    for label, median, p99, mean, rate in rows:
        if rate is None:
            print(f"{label:48} {median:10.3f} {p99:8.3f} {mean:8.3f} {'':>8}")
        else:
            print(f"{label:48} {'':>10} {'':>8} {'':>8} {rate:8.0f}")
    raw_median = rows[1][1]
    rate = rows[2][4] or 0.0
    verdict = "PASS" if raw_median <= MEDIAN_TARGET_MS else "FAIL"
    print(f"resolve median, raw client: {raw_median:.3f} ms (target <= 0.6 ms): {verdict}")
    verdict = "PASS" if rate >= THROUGHPUT_TARGET else "FAIL"
    print(f"resolve throughput, 4 clients: {rate:.0f}/s (target >= 2,500/s): {verdict}")
    print(f"after the run: {load_average()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main())
