"""Who is calling: API keys (``X-API-Key``) and JWT bearer tokens, turned into a principal.

API keys are kept as their SHA-256 only; a presented key is hashed and compared with every
configured hash with :func:`hmac.compare_digest`. Tokens are verified with PyJWT against the
algorithms the configuration pins (never ``none``; one family, so an HS256 token made with an
RS256 public key as its secret cannot verify), with ``exp`` required, and ``aud`` / ``iss``
checked when configured. A token's principal is ``jwt:<sub>``; its scopes come from the
``scope`` (space-separated) or ``scopes`` (list) claim, its agent ids from ``agent_ids``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from cra_agents._exceptions import AuthenticationError, MissingDependencyError
from cra_agents.server._config import ServerConfig
from cra_agents.server._principal import SCOPES, Principal

__all__ = ["CredentialAuthenticator"]


class CredentialAuthenticator:
    """The server's authenticator (``app.state.authenticate``): headers to a principal."""

    def __init__(self, config: ServerConfig) -> None:
        self._keys = tuple(
            (bytes.fromhex(k.sha256), Principal(f"key:{k.name}", k.scopes, k.agent_ids))
            for k in config.api_keys
        )
        self._jwt = config.jwt
        self._decoder: Any = None
        if self._jwt is not None:
            try:
                import jwt
            except ImportError as exc:  # pragma: no cover - the server extra installs it
                raise MissingDependencyError(
                    "verifying JWT bearer tokens", package="pyjwt", extra="server"
                ) from exc
            self._decoder = jwt

    def __call__(self, headers: Mapping[str, str]) -> Principal:
        """The principal the headers (lower-case names) prove.

        Raises:
            AuthenticationError: no credential, or one that does not verify.
        """
        key = headers.get("x-api-key")
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        bearer = scheme.lower() == "bearer"
        if key and bearer:
            # Two credentials: which one is meant is ambiguous, and the one not checked
            # could be invalid; refuse rather than pick.
            raise AuthenticationError(
                "give one credential: an X-API-Key header or a bearer token, not both",
                details={"reason": "ambiguous_credentials"},
            )
        if key:
            return self._api_key(key)
        if bearer and token.strip():
            return self._token(token.strip())
        raise AuthenticationError(
            "credentials required: an X-API-Key header or an Authorization: Bearer token",
            details={"reason": "missing_credentials"},
        )

    def _api_key(self, key: str) -> Principal:
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        for digest, principal in self._keys:  # every entry compared: no early exit
            if hmac.compare_digest(presented, digest):
                found = principal
        if found is None:
            raise AuthenticationError("invalid API key", details={"reason": "invalid_api_key"})
        return found

    def _token(self, token: str) -> Principal:
        config = self._jwt
        if config is None or self._decoder is None:
            raise AuthenticationError(
                "bearer tokens are not accepted by this server", details={"reason": "jwt_disabled"}
            )
        jwt = self._decoder
        required = ["exp", "sub"]
        if config.audience is not None:
            required.append("aud")
        if config.issuer is not None:
            required.append("iss")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in config.algorithms:
                raise AuthenticationError(
                    "token algorithm not accepted", details={"reason": "invalid_token"}
                )
            claims = jwt.decode(
                token,
                config.key,
                algorithms=list(config.algorithms),
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": required, "verify_aud": config.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("token expired", details={"reason": "token_expired"}) from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthenticationError(
                f"invalid token: {type(exc).__name__}", details={"reason": "invalid_token"}
            ) from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError("token has no subject", details={"reason": "invalid_token"})
        raw = claims.get("scopes", claims.get("scope", ""))
        if isinstance(raw, str):
            raw = raw.split()
        scopes = (
            frozenset(s for s in raw if isinstance(s, str)) & SCOPES
            if isinstance(raw, list)
            else frozenset()
        )
        agents = claims.get("agent_ids")
        agent_ids = (
            frozenset(a for a in agents if isinstance(a, str)) if isinstance(agents, list) else None
        )
        return Principal(f"jwt:{subject}", scopes, agent_ids)
