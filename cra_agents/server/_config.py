"""Configuration of the CRA HTTP server: a file, ``CRA_*`` environment variables, arguments.

Precedence, highest first: arguments of ``cra serve`` (``--host``, ``--port``, ``--store``,
``--atlas``), environment variables, the configuration file (``--config FILE`` or
``$CRA_CONFIG``), the defaults below. The file is TOML (``.toml``), JSON (``.json``) or YAML
(``.yaml`` / ``.yml``, needs ``pip install 'cra-agents[yaml]'``); its keys::

    host = "127.0.0.1"            # CRA_HOST        interface to listen on
    port = 8420                   # CRA_PORT        TCP port
    store = "sqlite://traces.db"  # CRA_STORE       trace store URL (default: the runtime's)
    atlases = ["./my-atlas"]      # CRA_ATLASES     atlases loaded at start (os.pathsep-separated)
    max_body_bytes = 1048576      # CRA_MAX_BODY_BYTES  larger request bodies get 413
    request_timeout = 30.0        # CRA_REQUEST_TIMEOUT seconds; then 504 REQUEST_TIMEOUT
    shutdown_timeout = 30.0       # CRA_SHUTDOWN_TIMEOUT seconds in-flight requests get on SIGTERM
    access_log = true             # CRA_ACCESS_LOG  JSON line per request (cra_agents.server.access)

    [rate_limit]                  # per principal, token bucket; 0 turns it off
    per_second = 50.0             # CRA_RATE_LIMIT_PER_SECOND
    burst = 100                   # CRA_RATE_LIMIT_BURST

    [[api_keys]]                  # X-API-Key credentials
    name = "ci-bot"               # principal id "key:ci-bot"
    sha256 = "<hex>"              # SHA-256 of the key (or `key = "..."`, hashed when read)
    scopes = ["read", "write"]    # the default; also "ingest" (POST /v1/ingest/batch) and
                                  # "audit" (read, verify, replay every stored session)
    agent_ids = ["triage-bot"]    # agent ids it may act as; absent: any

    [jwt]                         # Authorization: Bearer <JWT>
    algorithms = ["RS256"]        # CRA_JWT_ALGORITHMS (comma-separated); pinned, never "none"
    public_key_file = "jwt.pem"   # CRA_JWT_PUBLIC_KEY_FILE  for RS*/ES*/PS*/EdDSA
    secret = "..."                # CRA_JWT_SECRET  for HS* (at least 32 bytes)
    audience = "cra"              # CRA_JWT_AUDIENCE checked when set
    issuer = "https://idp"        # CRA_JWT_ISSUER   checked when set
    leeway = 0                    # CRA_JWT_LEEWAY   seconds of clock skew allowed on exp/nbf

``CRA_API_KEYS`` adds development keys: comma-separated ``name:key`` (or plain ``key``, named
``dev-<n>``), each with read and write scope and any agent id. Keys should be long random
strings (``python -c "import secrets; print(secrets.token_urlsafe(32))"``): only their SHA-256
is kept, and presented keys are compared with it in constant time.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cra_agents._exceptions import ConfigurationError, MissingDependencyError
from cra_agents.server._principal import DEFAULT_SCOPES, SCOPES

__all__ = ["ApiKey", "JWTConfig", "ServerConfig", "hash_key"]

_ASYMMETRIC = ("RS", "PS", "ES", "Ed")


def hash_key(key: str) -> str:
    """The stored form of an API key: SHA-256, lowercase hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key: who it is, what it may do, as whom; only the key's hash is kept."""

    name: str
    sha256: str
    scopes: frozenset[str] = DEFAULT_SCOPES
    agent_ids: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("an API key needs a name")
        digest = self.sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigurationError(f"API key {self.name!r}: sha256 must be 64 hex digits")
        object.__setattr__(self, "sha256", digest)
        unknown = set(self.scopes) - SCOPES
        if unknown:
            raise ConfigurationError(f"API key {self.name!r}: unknown scopes {sorted(unknown)}")

    @classmethod
    def plain(
        cls,
        name: str,
        key: str,
        scopes: frozenset[str] = DEFAULT_SCOPES,
        agent_ids: frozenset[str] | None = None,
    ) -> ApiKey:
        """An API key given in clear (hashed here, the clear key is not kept)."""
        if len(key) < 16:
            raise ConfigurationError(f"API key {name!r} is too short: use 16 characters or more")
        return cls(name, hash_key(key), scopes, agent_ids)


@dataclass(frozen=True, slots=True)
class JWTConfig:
    """How bearer tokens are verified: one algorithm family, pinned, with its key."""

    algorithms: tuple[str, ...]
    key: str
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise ConfigurationError("jwt.algorithms must name at least one algorithm")
        if any(a.lower() == "none" for a in self.algorithms):
            raise ConfigurationError("jwt.algorithms must not allow 'none'")
        symmetric = {a.startswith("HS") for a in self.algorithms}
        if len(symmetric) > 1:
            # An HS256 token "signed" with the RS256 public key must never verify.
            raise ConfigurationError(
                "jwt.algorithms mixes HMAC (HS*) and public-key algorithms: pin one family"
            )
        if not self.key:
            raise ConfigurationError("jwt needs a key: secret (HS*) or public_key_file")
        if self.symmetric:
            if "-----BEGIN" in self.key:
                raise ConfigurationError("an HS* secret must not be a PEM key")
            if len(self.key.encode()) < 32:
                raise ConfigurationError("jwt.secret must be at least 32 bytes")
        elif not self.algorithms[0].startswith(_ASYMMETRIC):
            raise ConfigurationError(f"unsupported JWT algorithm {self.algorithms[0]!r}")

    @property
    def symmetric(self) -> bool:
        """Whether the pinned algorithms are HMAC (a shared secret)."""
        return self.algorithms[0].startswith("HS")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``cra serve`` and :func:`~cra_agents.server.create_app` need to know.

    See the module docstring for the file keys and environment variables.
    """

    host: str = "127.0.0.1"
    port: int = 8420
    store: str | None = None
    atlases: tuple[str, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    jwt: JWTConfig | None = None
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 100
    max_body_bytes: int = 1024 * 1024
    request_timeout: float = 30.0
    shutdown_timeout: float = 30.0
    access_log: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port {self.port} is out of range")
        if self.max_body_bytes < 1:
            raise ConfigurationError("max_body_bytes must be positive")
        if self.request_timeout <= 0 or self.shutdown_timeout < 0:
            raise ConfigurationError("request_timeout must be positive, shutdown_timeout >= 0")
        if self.rate_limit_per_second < 0 or self.rate_limit_burst < 0:
            raise ConfigurationError("rate limits must be 0 (off) or positive")
        names = [k.name for k in self.api_keys]
        if len(names) != len(set(names)):
            raise ConfigurationError("API key names must be unique")

    def with_options(self, **changes: Any) -> ServerConfig:
        """A copy with ``changes`` (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Read the file (``path`` or ``$CRA_CONFIG``, if any), then the environment.

        Raises:
            ConfigurationError: an unreadable file, an unknown key or a bad value.
        """
        env = os.environ if env is None else env
        path = path or env.get("CRA_CONFIG") or None
        data: dict[str, Any] = dict(_read_file(Path(path))) if path else {}
        return cls.from_mapping(_merge_env(data, env))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ServerConfig:
        """Build from the file layout (see the module docstring).

        Raises:
            ConfigurationError: an unknown key or a bad value.
        """
        data = dict(data)
        known = {
            "host",
            "port",
            "store",
            "atlases",
            "api_keys",
            "jwt",
            "rate_limit",
            "max_body_bytes",
            "request_timeout",
            "shutdown_timeout",
            "access_log",
        }
        unknown = set(data) - known
        if unknown:
            raise ConfigurationError(f"unknown server configuration keys: {sorted(unknown)}")
        try:
            rate = dict(data.pop("rate_limit", None) or {})
            extra = set(rate) - {"per_second", "burst"}
            if extra:
                raise ConfigurationError(f"unknown rate_limit keys: {sorted(extra)}")
            kwargs: dict[str, Any] = {
                "api_keys": tuple(_api_key(k) for k in data.pop("api_keys", None) or ()),
                "jwt": _jwt(data.pop("jwt")) if data.get("jwt") else None,
            }
            data.pop("jwt", None)
            if "per_second" in rate:
                kwargs["rate_limit_per_second"] = float(rate["per_second"])
            if "burst" in rate:
                kwargs["rate_limit_burst"] = int(rate["burst"])
            for name, convert in (
                ("host", str),
                ("port", int),
                ("store", str),
                ("max_body_bytes", int),
                ("request_timeout", float),
                ("shutdown_timeout", float),
                ("access_log", _bool),
            ):
                if data.get(name) is not None:
                    kwargs[name] = convert(data[name])
            if data.get("atlases"):
                atlases = data["atlases"]
                kwargs["atlases"] = (atlases,) if isinstance(atlases, str) else tuple(atlases)
            return cls(**kwargs)
        except (TypeError, ValueError, KeyError) as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"bad server configuration: {exc}") from exc


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _read_file(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the server configuration {path}: {exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in {".yaml", ".yml"}:
            try:
                yaml: Any = importlib.import_module("yaml")
            except ImportError as exc:
                raise MissingDependencyError(
                    "a YAML server configuration", package="pyyaml", extra="yaml"
                ) from exc
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigurationError(f"{path}: use a .toml, .json, .yaml or .yml file")
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(f"{path} is not valid {suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{path} must hold a table / object at the top")
    if "server" in data and isinstance(data["server"], Mapping) and len(data) == 1:
        data = data["server"]  # [server] table allowed
    return dict(data)


def _merge_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    simple = {
        "CRA_HOST": "host",
        "CRA_PORT": "port",
        "CRA_STORE": "store",
        "CRA_MAX_BODY_BYTES": "max_body_bytes",
        "CRA_REQUEST_TIMEOUT": "request_timeout",
        "CRA_SHUTDOWN_TIMEOUT": "shutdown_timeout",
        "CRA_ACCESS_LOG": "access_log",
    }
    for variable, key in simple.items():
        if env.get(variable):
            data[key] = env[variable]
    if env.get("CRA_ATLASES"):
        data["atlases"] = [p for p in env["CRA_ATLASES"].split(os.pathsep) if p]
    rate = _table(data, "rate_limit")
    if env.get("CRA_RATE_LIMIT_PER_SECOND"):
        rate["per_second"] = env["CRA_RATE_LIMIT_PER_SECOND"]
    if env.get("CRA_RATE_LIMIT_BURST"):
        rate["burst"] = env["CRA_RATE_LIMIT_BURST"]
    if rate:
        data["rate_limit"] = rate
    jwt = _table(data, "jwt")
    for variable, key in (
        ("CRA_JWT_ALGORITHMS", "algorithms"),
        ("CRA_JWT_SECRET", "secret"),
        ("CRA_JWT_PUBLIC_KEY_FILE", "public_key_file"),
        ("CRA_JWT_AUDIENCE", "audience"),
        ("CRA_JWT_ISSUER", "issuer"),
        ("CRA_JWT_LEEWAY", "leeway"),
    ):
        if env.get(variable):
            jwt[key] = env[variable]
    if jwt:
        data["jwt"] = jwt
    if env.get("CRA_API_KEYS"):
        keys = list(data.get("api_keys") or ())
        for n, item in enumerate(p.strip() for p in env["CRA_API_KEYS"].split(",")):
            if not item:
                continue
            name, sep, key = item.partition(":")
            keys.append({"name": name, "key": key} if sep else {"name": f"dev-{n}", "key": item})
        data["api_keys"] = keys
    return data


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise ConfigurationError(f"{key} must be a table / object")
    return dict(value or {})


def _strings(value: Any, what: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{what} must be a list of strings")
    return frozenset(value)


def _api_key(spec: Any) -> ApiKey:
    if not isinstance(spec, Mapping):
        raise ConfigurationError("each api_keys entry must be a table / object")
    unknown = set(spec) - {"name", "key", "sha256", "scopes", "agent_ids"}
    if unknown:
        raise ConfigurationError(f"unknown api_keys keys: {sorted(unknown)}")
    name = str(spec.get("name") or "")
    scopes = _strings(spec["scopes"], "scopes") if "scopes" in spec else DEFAULT_SCOPES
    agents = _strings(spec["agent_ids"], "agent_ids") if spec.get("agent_ids") else None
    if ("key" in spec) == ("sha256" in spec):
        raise ConfigurationError(f"API key {name!r}: give exactly one of key and sha256")
    if "key" in spec:
        return ApiKey.plain(name, str(spec["key"]), scopes, agents)
    return ApiKey(name, str(spec["sha256"]), scopes, agents)


def _jwt(spec: Any) -> JWTConfig:
    if not isinstance(spec, Mapping):
        raise ConfigurationError("jwt must be a table / object")
    unknown = set(spec) - {
        "algorithms",
        "secret",
        "public_key",
        "public_key_file",
        "audience",
        "issuer",
        "leeway",
    }
    if unknown:
        raise ConfigurationError(f"unknown jwt keys: {sorted(unknown)}")
    algorithms = spec.get("algorithms") or ()
    if isinstance(algorithms, str):
        algorithms = [a.strip() for a in algorithms.split(",") if a.strip()]
    key = spec.get("secret") or spec.get("public_key") or ""
    if spec.get("public_key_file"):
        if spec.get("secret"):
            raise ConfigurationError("jwt: give a secret or a public key, not both")
        try:
            key = Path(spec["public_key_file"]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read jwt.public_key_file: {exc}") from exc
    return JWTConfig(
        algorithms=tuple(str(a) for a in algorithms),
        key=str(key),
        audience=spec.get("audience") or None,
        issuer=spec.get("issuer") or None,
        leeway=float(spec.get("leeway") or 0),
    )
