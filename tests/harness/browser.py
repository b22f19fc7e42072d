"""Headless Chromium for tests: find it, run it on a page with a timeout, read what it reports.

Every run uses a fresh profile and the flags ``--headless --no-sandbox --disable-gpu
--no-first-run --disable-background-networking`` (plus ``--disable-component-update
--disable-sync --disable-quic``). Two things are read back besides the page itself:

* **Console messages.** ``--enable-logging=stderr --v=0`` makes Chromium log every console
  message of the page — ``console.*`` calls, uncaught exceptions and Content-Security-Policy
  violations — to stderr as ``...:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)``
  (older builds write ``CONSOLE(<line>)``); :func:`console_messages` picks those lines out.
* **Network requests.** ``--log-net-log=FILE`` writes Chromium's NetLog (JSON). Each URL request
  starts with a ``URL_REQUEST_START_JOB`` event whose ``initiator`` is the requesting origin;
  the browser's own background traffic (update checks and the like, which these flags do not
  stop entirely) has the initiator ``not an origin``. :func:`page_requests` returns the URLs of
  all other requests, i.e. those a page made. ``file:`` pages do not go through the network
  stack, so loading the page itself is not among them.

Both detectors are proven by the tests with deliberately broken pages, so a change of log
format in a newer Chromium makes the tests fail instead of silently passing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.processes import run_bounded

#: Set to the Chromium binary to use; default: ``chromium`` on PATH, then /usr/bin/chromium.
CHROMIUM_ENV = "CRA_TEST_CHROMIUM"
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)
_CONSOLE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\] (.*)$")
_BROWSER_INITIATOR = "not an origin"


def find_chromium() -> Path | None:
    """The Chromium binary, or None when it is not installed."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return Path(configured) if Path(configured).is_file() else None
    found = shutil.which("chromium")
    if found:
        return Path(found)
    default = Path("/usr/bin/chromium")
    return default if default.is_file() else None


@dataclass
class BrowserRun:
    """What one Chromium run produced."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    net_log: Path | None = None
    console: list[str] = field(default_factory=list)

    def page_requests(self) -> list[str]:
        """URLs the page requested (needs ``net_log``)."""
        if self.net_log is None:
            raise ValueError("this run had no --log-net-log")
        return page_requests(self.net_log)


def console_messages(stderr: str) -> list[str]:
    """The page's console messages (errors, warnings, logs, CSP violations) in a log."""
    out = []
    for line in stderr.splitlines():
        match = _CONSOLE.search(line)
        if match:
            out.append(match.group(1))
    return out


def read_net_log(path: Path) -> dict[str, Any]:
    """A NetLog file; a log cut off at exit (no closing brackets) is completed first."""
    text = path.read_text("utf-8")
    try:
        data: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:
        data = json.loads(text.rstrip().rstrip(",") + "]}")
    return data


def page_requests(path: Path) -> list[str]:
    """URLs of requests a page (not the browser itself) started, from a NetLog file."""
    log = read_net_log(path)
    kinds = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log["events"]:
        if kinds.get(event.get("type")) != "URL_REQUEST_START_JOB":
            continue
        params = event.get("params") or {}
        # The job's begin event carries the URL and initiator; its end event only the result.
        if "url" in params and params.get("initiator") != _BROWSER_INITIATOR:
            urls.append(str(params.get("url")))
    return urls


def run_chromium(
    binary: Path,
    page: Path,
    mode: Sequence[str],
    *,
    workdir: Path,
    net_log: bool = False,
    timeout: float = 30.0,
) -> BrowserRun:
    """Run headless Chromium on ``page`` with ``mode`` flags (``--dump-dom``, ``--screenshot``).

    Each run gets its own profile directory under ``workdir``. Chromium is started in its own
    process group, and that group is killed if the run exceeds ``timeout`` seconds.

    Raises:
        TimeoutError: Chromium did not finish in time.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    profile = workdir / f"profile-{time.monotonic_ns()}"
    log_path = workdir / f"netlog-{time.monotonic_ns()}.json" if net_log else None
    args = [
        str(binary),
        *BASE_FLAGS,
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *([f"--log-net-log={log_path}"] if log_path else []),
        *mode,
        page.resolve().as_uri(),
    ]
    started = time.monotonic()
    try:
        done = run_bounded(args, cwd=workdir, timeout=timeout)
    except TimeoutError as exc:
        raise TimeoutError(f"chromium did not finish within {timeout}s: {args}") from exc
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    stderr = done.stderr
    return BrowserRun(
        args=args,
        returncode=done.returncode,
        stdout=done.stdout,
        stderr=stderr,
        seconds=time.monotonic() - started,
        net_log=log_path,
        console=console_messages(stderr),
    )


def dump_dom(binary: Path, page: Path, *, workdir: Path, net_log: bool = True) -> BrowserRun:
    """The page's DOM after load and scripts (``stdout``), with its console and NetLog."""
    return run_chromium(binary, page, ["--dump-dom"], workdir=workdir, net_log=net_log)


def screenshot(
    binary: Path, page: Path, png: Path, *, workdir: Path, size: tuple[int, int] = (1280, 1800)
) -> BrowserRun:
    """A PNG screenshot of the page's viewport at ``size``."""
    return run_chromium(
        binary,
        page,
        [f"--screenshot={png.resolve()}", f"--window-size={size[0]},{size[1]}"],
        workdir=workdir,
    )


# -- PNG (stdlib only) ------------------------------------------------------------------------


@dataclass
class Image:
    """A decoded 8-bit RGB(A) PNG: ``rows`` of packed pixels, ``channels`` bytes each."""

    width: int
    height: int
    channels: int
    rows: list[bytes]

    def colors(self) -> dict[bytes, int]:
        """Pixel count per RGB colour."""
        counts: dict[bytes, int] = {}
        step = self.channels
        for row in self.rows:
            for i in range(0, len(row), step):
                key = row[i : i + 3]
                counts[key] = counts.get(key, 0) + 1
        return counts


def decode_png(data: bytes) -> Image:
    """Decode a non-interlaced 8-bit RGB or RGBA PNG (what Chromium's screenshots are).

    Raises:
        ValueError: not a PNG, or a kind this decoder does not handle.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos = 8
    header: tuple[int, ...] | None = None
    chunks: list[bytes] = []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"bad CRC in chunk {kind!r}")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("no IHDR chunk")
    width, height, depth, color_type, _, _, interlace = header
    if depth != 8 or color_type not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {color_type}")
    channels = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError("image data has the wrong size")
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        offset = y * (stride + 1)
        line = bytearray(raw[offset + 1 : offset + 1 + stride])
        _unfilter(raw[offset], line, previous, channels)
        rows.append(bytes(line))
        previous = line
    return Image(width, height, channels, rows)


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    """Undo one row's PNG filter in place (RFC 2083 §6)."""
    n = len(line)
    if kind == 0:
        return
    if kind == 1:
        for i in range(bpp, n):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif kind == 2:
        line[:] = bytes((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
    elif kind == 3:
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(n):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    else:
        raise ValueError(f"unknown PNG filter {kind}")
