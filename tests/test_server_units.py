"""The server's parts one by one: configuration, credentials, limits, the app's wiring."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from cra_agents import (
    AuthenticationError,
    ConfigurationError,
    MissingDependencyError,
    Runtime,
    TooManyRequestsError,
)
from cra_agents.server import ServerConfig, create_app
from cra_agents.server._app import contract
from cra_agents.server._auth import CredentialAuthenticator
from cra_agents.server._config import ApiKey, JWTConfig, hash_key
from cra_agents.server._limits import RequestMiddleware, TokenBuckets, current_request

KEY = "unit-key-0123456789abcdef"
SECRET = "s" * 64

# -- configuration ---------------------------------------------------------------------------


def test_defaults() -> None:
    config = ServerConfig()
    assert (config.host, config.port, config.max_body_bytes) == ("127.0.0.1", 8420, 1048576)
    assert config.api_keys == () and config.jwt is None
    assert config.with_options(port=1, host=None).port == 1


def test_toml_file_and_environment(tmp_path: Path) -> None:
    pem = tmp_path / "jwt.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    path = tmp_path / "server.toml"
    path.write_text(
        f"""
host = "0.0.0.0"
port = 9000
store = "memory://"
atlases = "one"
max_body_bytes = 2048
request_timeout = 5
shutdown_timeout = 3
access_log = "no"

[rate_limit]
per_second = 2.5
burst = 7

[[api_keys]]
name = "ci"
sha256 = "{hash_key(KEY).upper()}"
scopes = ["read"]
agent_ids = ["bot"]

[jwt]
algorithms = ["RS256", "ES256"]
public_key_file = "{pem}"
audience = "cra"
issuer = "https://idp"
leeway = 5
"""
    )
    config = ServerConfig.load(path, env={})
    assert (config.host, config.port, config.store, config.atlases) == (
        "0.0.0.0",  # noqa: S104 - what the file says
        9000,
        "memory://",
        ("one",),
    )
    assert (config.rate_limit_per_second, config.rate_limit_burst) == (2.5, 7)
    assert (config.request_timeout, config.shutdown_timeout, config.access_log) == (5, 3, False)
    key = config.api_keys[0]
    assert (
        key.sha256 == hash_key(KEY)
        and key.scopes == {"read"}
        and key.agent_ids == frozenset({"bot"})
    )
    assert config.jwt is not None and not config.jwt.symmetric
    assert config.jwt.audience == "cra" and config.jwt.leeway == 5

    env = {
        "CRA_CONFIG": str(path),
        "CRA_PORT": "9100",
        "CRA_HOST": "127.0.0.2",
        "CRA_ATLASES": "a:b",
        "CRA_RATE_LIMIT_PER_SECOND": "9",
        "CRA_RATE_LIMIT_BURST": "3",
        "CRA_API_KEYS": f"dev:{KEY}, {KEY}x ,",
        "CRA_JWT_ALGORITHMS": "HS256",
        "CRA_JWT_SECRET": SECRET,
        "CRA_JWT_AUDIENCE": "other",
    }
    with pytest.raises(ConfigurationError, match="not both"):
        ServerConfig.load(env=env)
    path.write_text('port = 1\n[jwt]\nissuer = "x"\n')
    config = ServerConfig.load(env=env)
    assert config.port == 9100 and config.host == "127.0.0.2" and config.atlases == ("a", "b")
    assert [k.name for k in config.api_keys] == ["dev", "dev-1"]
    assert config.api_keys[1].sha256 == hash_key(KEY + "x")
    assert config.jwt == JWTConfig(("HS256",), SECRET, audience="other", issuer="x")
    assert (config.rate_limit_per_second, config.rate_limit_burst) == (9, 3)


def test_json_yaml_and_server_table(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"server": {"port": 1234, "api_keys": [{"name": "a", "key": KEY}]}}))
    assert ServerConfig.load(path, env={}).port == 1234
    path = tmp_path / "c.yaml"
    path.write_text("port: 4321\naccess_log: true\n")
    assert ServerConfig.load(path, env={}).port == 4321


@pytest.mark.parametrize(
    ("text", "suffix", "match"),
    [
        ("port = 1\nbogus = 2\n", ".toml", "unknown server configuration keys"),
        ("[rate_limit]\nper_minute = 1\n", ".toml", "unknown rate_limit keys"),
        ("port = 'x'\n", ".toml", "bad server configuration"),
        ("port = 70000\n", ".toml", "out of range"),
        ("max_body_bytes = 0\n", ".toml", "max_body_bytes"),
        ("request_timeout = 0\n", ".toml", "request_timeout"),
        ("[rate_limit]\nburst = -1\n", ".toml", "rate limits"),
        ("port = [\n", ".toml", "not valid TOML"),
        ("{", ".json", "not valid JSON"),
        ("[1]", ".json", "table / object"),
        ("port: 1", ".ini", "use a .toml"),
        ("api_keys = [1]\n", ".toml", "table / object"),
        ("[[api_keys]]\nname = 'a'\nkey = 'short'\n", ".toml", "too short"),
        ("[[api_keys]]\nname = 'a'\n", ".toml", "exactly one of key and sha256"),
        ("[[api_keys]]\nname = 'a'\nsha256 = 'xyz'\n", ".toml", "64 hex digits"),
        ("[[api_keys]]\nname = ''\nsha256 = 'xyz'\n", ".toml", "needs a name"),
        ("[[api_keys]]\nname = 'a'\nkey = 'k'\nextra = 1\n", ".toml", "unknown api_keys keys"),
        (
            "[[api_keys]]\nname = 'a'\nkey = '0123456789abcdef'\nscopes = ['admin']\n",
            ".toml",
            "unknown scopes",
        ),
        (
            "[[api_keys]]\nname = 'a'\nkey = '0123456789abcdef'\nscopes = [1]\n",
            ".toml",
            "list of strings",
        ),
        (
            "[[api_keys]]\nname='a'\nkey='0123456789abcdef'\n"
            "[[api_keys]]\nname='a'\nkey='0123456789abcdeg'\n",
            ".toml",
            "unique",
        ),
        ("jwt = 1\n", ".toml", "jwt must be a table"),
        ("[jwt]\nalgorithms = ['HS256']\nkid = 1\n", ".toml", "unknown jwt keys"),
        ("[jwt]\nsecret = 'x'\n", ".toml", "at least one algorithm"),
        ("[jwt]\nalgorithms = ['none']\nsecret = 'x'\n", ".toml", "'none'"),
        ("[jwt]\nalgorithms = ['HS256', 'RS256']\nsecret = 'x'\n", ".toml", "one family"),
        ("[jwt]\nalgorithms = ['HS256']\n", ".toml", "needs a key"),
        ("[jwt]\nalgorithms = ['HS256']\nsecret = 'short'\n", ".toml", "32 bytes"),
        (
            "[jwt]\nalgorithms = ['HS256']\nsecret = '-----BEGIN PUBLIC KEY----- 0123456789'\n",
            ".toml",
            "PEM",
        ),
        ("[jwt]\nalgorithms = ['XX1']\npublic_key = 'k'\n", ".toml", "unsupported"),
        ("[jwt]\nalgorithms = ['RS256']\npublic_key_file = '/nonexistent'\n", ".toml", "cannot"),
    ],
)
def test_bad_configuration(tmp_path: Path, text: str, suffix: str, match: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=match):
        ServerConfig.load(path, env={})


def test_unreadable_file_and_missing_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        ServerConfig.load(tmp_path / "missing.toml", env={})
    path = tmp_path / "c.yml"
    path.write_text("port: 1\n")
    import importlib

    real = importlib.import_module

    def no_yaml(name: str, *args: Any) -> Any:
        if name == "yaml":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_yaml)
    with pytest.raises(MissingDependencyError, match="yaml"):
        ServerConfig.load(path, env={})


# -- credentials -----------------------------------------------------------------------------


def _authenticator(**changes: Any) -> CredentialAuthenticator:
    config = ServerConfig(
        api_keys=(ApiKey.plain("a", KEY),),
        jwt=JWTConfig(("HS256",), SECRET),
    )
    return CredentialAuthenticator(config.with_options(**changes))


def test_api_keys_and_hmac_tokens() -> None:
    authenticate = _authenticator()
    assert authenticate({"x-api-key": KEY}).id == "key:a"
    token = jwt.encode(
        {"sub": "bob", "exp": 2**40, "scope": "read admin", "agent_ids": ["x", 1]},
        SECRET,
        algorithm="HS256",
    )
    principal = authenticate({"authorization": f"bearer {token}"})
    assert principal.id == "jwt:bob"
    assert principal.scopes == {"read"} and principal.agent_ids == frozenset({"x"})
    odd = jwt.encode({"sub": "bob", "exp": 2**40, "scopes": 5}, SECRET, algorithm="HS256")
    assert authenticate({"authorization": f"Bearer {odd}"}).scopes == frozenset()
    with pytest.raises(AuthenticationError, match="not both"):
        authenticate({"x-api-key": KEY, "authorization": f"Bearer {token}"})
    with pytest.raises(AuthenticationError, match="credentials required"):
        authenticate({"authorization": "Basic abc"})
    with pytest.raises(AuthenticationError, match="credentials required"):
        authenticate({"authorization": "Bearer "})
    empty = jwt.encode({"sub": "", "exp": 2**40}, SECRET, algorithm="HS256")
    with pytest.raises(AuthenticationError):
        authenticate({"authorization": f"Bearer {empty}"})
    hs512 = jwt.encode({"sub": "bob", "exp": 2**40}, SECRET, algorithm="HS512")
    with pytest.raises(AuthenticationError, match="algorithm"):
        authenticate({"authorization": f"Bearer {hs512}"})


# -- limits ----------------------------------------------------------------------------------


def test_token_buckets_refill_and_forget() -> None:
    now = [0.0]
    buckets = TokenBuckets(2.0, 2, clock=lambda: now[0], keep=2)
    buckets.take("a")
    buckets.take("a")
    with pytest.raises(TooManyRequestsError) as info:
        buckets.take("a")
    assert info.value.retry_after == pytest.approx(0.5)
    now[0] = 0.5
    buckets.take("a")
    buckets.take("b")
    buckets.take("c")  # "a" is forgotten: a fresh bucket
    now[0] = 0.5
    buckets.take("a")
    buckets.take("a")
    off = TokenBuckets(0, 0)
    assert not off.enabled
    for _ in range(100):
        off.take("a")


def test_middleware_passes_other_scopes_and_websockets() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], current_request()))

    middleware = RequestMiddleware(app, max_body_bytes=10, request_timeout=1)

    async def nothing() -> Any:
        return {}

    async def ignore(message: Any) -> None:
        return None

    asyncio.run(middleware({"type": "lifespan"}, nothing, ignore))
    asyncio.run(
        middleware({"type": "websocket", "headers": [(b"x-request-id", b"ws-1")]}, nothing, ignore)
    )
    assert seen[0] == ("lifespan", None)
    assert seen[1][0] == "websocket" and seen[1][1].request_id == "ws-1"


def test_middleware_edge_cases() -> None:
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(message["type"]).encode()})
        raise RuntimeError("after the response started")

    middleware = RequestMiddleware(app, max_body_bytes=10, request_timeout=1, access_log=False)

    async def disconnect() -> Any:
        return {"type": "http.disconnect"}

    async def record(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-length", b"x"), (b"traceparent", b"00-" + b"0" * 32 + b"-1-01")],
    }
    asyncio.run(middleware(scope, disconnect, record))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b'"http.disconnect"'
    assert scope["cra.trace_id"] is None  # an invalid traceparent is ignored


# -- the app ---------------------------------------------------------------------------------


def test_optional_routers_are_mounted_and_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, github_ops: Path
) -> None:
    (tmp_path / "cra_fake_router.py").write_text(
        "from fastapi import APIRouter\n"
        "from pydantic import BaseModel\n"
        "router = APIRouter()\n"
        "class Thing(BaseModel):\n    name: str\n"
        "@router.post('/v1/things')\n"
        "def things(thing: Thing) -> Thing:\n    return thing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        "cra_agents.server._app.OPTIONAL_ROUTERS", ("cra_fake_router", "cra_missing_router")
    )
    with Runtime([github_ops], store="memory://") as rt:
        client = TestClient(create_app(rt, ServerConfig(api_keys=(ApiKey.plain("a", KEY),))))
        document = client.get("/openapi.json").json()
        assert document["paths"]["/v1/things"]["post"]["x-cra-extension"] is True
        assert "Thing" in document["components"]["schemas"]
        assert client.get("/openapi.json").json() == document
        assert client.post("/v1/things", json={"name": "x"}).json() == {"name": "x"}
    assert contract()["paths"]["/health"]["get"]["security"] == []


def test_group_durability_runs_off_the_loop(github_ops: Path) -> None:
    with Runtime([github_ops], store="memory://", durability="group") as rt:
        client = TestClient(
            create_app(rt, ServerConfig(api_keys=(ApiKey.plain("a", KEY),))),
            headers={"X-API-Key": KEY},
        )
        created = client.post("/v1/sessions", json={"agent_id": "a", "goal": "g"})
        assert created.status_code == 201
        assert rt.session(created.json()["session_id"]).durable_count == 1


def test_health_when_the_trace_fails(github_ops: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Runtime([github_ops], store="memory://") as rt:
        client = TestClient(create_app(rt, ServerConfig()))
        monkeypatch.setattr(Runtime, "trace_failure", property(lambda self: OSError("disk")))
        response = client.get("/health")
        assert response.status_code == 503
        assert "disk" in response.json()["checks"]["trace_store"]["message"]


def test_graceful_server_restores_signal_handlers() -> None:
    import uvicorn

    from cra_agents.server._run import GracefulServer

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    server = GracefulServer(uvicorn.Config(app))
    before = signal.getsignal(signal.SIGTERM)
    with server.capture_signals():
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit
    assert signal.getsignal(signal.SIGTERM) == before
    done = threading.Event()

    def elsewhere() -> None:
        with server.capture_signals():
            done.set()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert done.is_set()


def test_wire_is_model_dump_json_without_nones(github_ops: Path) -> None:
    from cra_agents._requests import execute_request, resolve_request
    from cra_agents.server._routes import wire

    with Runtime([github_ops], store="memory://") as rt:
        session = rt.create_session("bot", "triage issues")
        resolution = rt.resolve(resolve_request(session))
        assert wire(resolution) == json.loads(resolution.model_dump_json(exclude_none=True))
        response = rt.execute(
            execute_request(session, resolution.resolution_id, "github.issue.list", {"repo": "a/b"})
        )
        assert wire(response) == json.loads(response.model_dump_json(exclude_none=True))
        for event in rt.trace_events(session.session_id):
            assert wire(event, nulls=True) == event.model_dump(mode="json")
