"""Fetching an atlas over HTTP(S), bounded in size and time."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

from cra_agents._exceptions import AtlasError

__all__ = ["fetch_bytes"]

_MAX_REDIRECTS = 3
#: The only content codings accepted: the body is never decompressed, so a small encoded body
#: cannot expand past ``max_bytes`` (a zstd frame of 8 KB decodes to 256 MiB).
_IDENTITY = frozenset({"", "identity"})
#: The watchdog fires this long after the deadline: a server that is merely silent is cut by
#: httpx's own timeout first, the watchdog only by one that keeps the reads busy.
_GRACE = 0.05


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class _Watchdog:
    """Shuts the fetch's sockets down at the deadline.

    httpx's timeouts bound each socket operation, not the exchange: a server sending one byte
    of its headers per second never lets a read time out. At the deadline a timer shuts the
    connection's socket down, which ends any blocked read at once. The socket is learnt from
    httpcore's documented ``trace`` extension as soon as it connects.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        sock = info["return_value"].get_extra_info("socket")
        if not isinstance(sock, socket.socket):  # pragma: no cover - httpcore's sync backend
            return
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                self._shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        # socket.socket's own shutdown, also for a TLS socket: it only wakes the reader, which
        # then fails; SSLSocket.shutdown would also drop the TLS state under its feet.
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def fetch_bytes(
    url: str, *, max_bytes: int, timeout: float, deadline: float | None = None
) -> bytes:
    """GET ``url`` and return the body.

    The body is streamed and abandoned one chunk past ``max_bytes``; the whole exchange,
    redirects included, must finish within ``timeout`` seconds, or by ``deadline`` (a
    :func:`time.monotonic` instant shared by several fetches) when given. A server that keeps
    the connection busy by dripping bytes is cut off at the deadline all the same. Only the
    identity content coding is asked for and accepted: an encoded body is refused, never
    decompressed. Redirects are followed only to the same scheme, host and port. Proxies and
    ``.netrc`` from the environment are ignored.

    Raises:
        AtlasError: ``fetch_failed``, ``too_large``, ``timeout``, ``redirect_refused``,
            ``encoding_refused`` or ``bad_url``.
    """
    import httpx

    if deadline is None:
        deadline = time.monotonic() + timeout

    def timed_out() -> AtlasError:
        return AtlasError(
            f"fetching took longer than {timeout:g}s",
            reason="timeout",
            source=url,
            code="ATLAS_LOAD_ERROR",
        )

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0 or watchdog.fired:
            raise timed_out()
        return left

    origin = _origin(url)
    current = url
    watchdog = _Watchdog(deadline - time.monotonic() + _GRACE)
    try:
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                request = client.build_request(
                    "GET",
                    current,
                    timeout=httpx.Timeout(remaining()),
                    headers={
                        "Accept": "application/vnd.cra.atlas+json, application/json",
                        "Accept-Encoding": "identity",
                    },
                    extensions={"trace": watchdog.trace},
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
                    coding = response.headers.get("content-encoding", "").strip().lower()
                    if coding not in _IDENTITY:
                        raise AtlasError(
                            f"server sent a {coding!r}-encoded body; only identity is accepted",
                            reason="encoding_refused",
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
                    # Raw bytes: nothing is decoded (the coding was checked to be identity).
                    for chunk in response.iter_raw():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise AtlasError(
                                f"atlas is over the {max_bytes}-byte limit",
                                reason="too_large",
                                source=url,
                            )
                        remaining()
                    remaining()  # a body ended by the watchdog's shutdown is not complete
                    return bytes(body)
                finally:
                    response.close()
            raise AtlasError(
                f"more than {_MAX_REDIRECTS} redirects",
                reason="redirect_refused",
                source=url,
                code="ATLAS_LOAD_ERROR",
            )
    except httpx.InvalidURL as exc:  # not an HTTPError: a NUL or a control character, say
        raise AtlasError(
            f"not a usable URL: {exc}", reason="bad_url", source=url, code="ATLAS_LOAD_ERROR"
        ) from exc
    except httpx.TimeoutException as exc:
        raise timed_out() from exc
    except httpx.HTTPError as exc:
        if watchdog.fired:
            raise timed_out() from exc
        raise AtlasError(
            f"could not fetch the atlas: {exc}",
            reason="fetch_failed",
            source=url,
            code="ATLAS_LOAD_ERROR",
        ) from exc
    finally:
        watchdog.cancel()
