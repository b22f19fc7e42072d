"""Fetching an atlas over HTTP(S), bounded in size and time."""

from __future__ import annotations

import time
from urllib.parse import urljoin, urlsplit

from cra_agents._exceptions import AtlasError

__all__ = ["fetch_bytes"]

_MAX_REDIRECTS = 3


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def fetch_bytes(url: str, *, max_bytes: int, timeout: float) -> bytes:
    """GET ``url`` and return the body.

    The body is streamed and abandoned one chunk past ``max_bytes``; the whole exchange,
    redirects included, must finish within ``timeout`` seconds (a stalled read is cut by the
    per-read timeout, itself the remaining budget). Redirects are followed only to the same
    scheme, host and port. Proxies and ``.netrc`` from the environment are ignored.

    Raises:
        AtlasError: ``fetch_failed``, ``too_large``, ``timeout`` or ``redirect_refused``.
    """
    import httpx

    deadline = time.monotonic() + timeout
    origin = _origin(url)
    current = url

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AtlasError(
                f"fetching took longer than {timeout:g}s",
                reason="timeout",
                source=url,
                code="ATLAS_LOAD_ERROR",
            )
        return left

    try:
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                request = client.build_request(
                    "GET",
                    current,
                    timeout=httpx.Timeout(remaining()),
                    headers={"Accept": "application/vnd.cra.atlas+json, application/json"},
                )
                response = client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        target = urljoin(current, response.headers.get("location", ""))
                        if _origin(target) != origin:
                            raise AtlasError(
                                f"redirect to another host refused: {target}",
                                reason="redirect_refused",
                                source=url,
                                code="ATLAS_LOAD_ERROR",
                            )
                        current = target
                        continue
                    if response.status_code != 200:
                        raise AtlasError(
                            f"server answered HTTP {response.status_code}",
                            details={"status": response.status_code},
                            reason="fetch_failed",
                            source=url,
                            code="ATLAS_LOAD_ERROR",
                        )
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                        raise AtlasError(
                            f"atlas is {declared} bytes, over the {max_bytes}-byte limit",
                            reason="too_large",
                            source=url,
                        )
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise AtlasError(
                                f"atlas is over the {max_bytes}-byte limit",
                                reason="too_large",
                                source=url,
                            )
                        remaining()
                    return bytes(body)
                finally:
                    response.close()
            raise AtlasError(
                f"more than {_MAX_REDIRECTS} redirects",
                reason="redirect_refused",
                source=url,
                code="ATLAS_LOAD_ERROR",
            )
    except httpx.TimeoutException as exc:
        raise AtlasError(
            f"fetching took longer than {timeout:g}s",
            reason="timeout",
            source=url,
            code="ATLAS_LOAD_ERROR",
        ) from exc
    except httpx.HTTPError as exc:
        raise AtlasError(
            f"could not fetch the atlas: {exc}",
            reason="fetch_failed",
            source=url,
            code="ATLAS_LOAD_ERROR",
        ) from exc
