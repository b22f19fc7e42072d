"""Untrusted input stays bounded (issue 14): URL responses, schema patterns and formats,
file names from atlases, and strings from traces on a terminal or in the HTML report.

Each class reproduces one way an atlas, a server or a trace could hang, flood or deceive, and
checks it is refused in bounded time, or shown for what it is. Servers are real, bound to
127.0.0.1, and written with raw sockets so they can misbehave in ways http.server would not.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import subprocess
import sys
import threading
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cra_agents as cra
from cra_agents import _schema_rules
from cra_agents._exceptions import AtlasError
from cra_agents._schema_rules import _walk, schema_problems
from cra_agents.atlas import read_context_file
from cra_agents.atlas._fetch import _Watchdog, fetch_bytes
from cra_agents.cli import main
from cra_agents.cli._output import clean
from cra_agents.runtime import _params
from cra_agents.runtime._params import first_error
from cra_agents.tools import lint_atlas

# -- a raw local HTTP server that can misbehave -----------------------------------------------

#: A route answers a request: it is given the connected socket and writes what it likes.
Route = Callable[[socket.socket], None]


def _response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers, "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawServer:
    """An HTTP/1.1 server on 127.0.0.1 whose routes write raw bytes to the socket."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5.0)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n")[0].decode("latin-1")
            self.requests.append(head)
            path = head.split(" ")[1]
            route = self.routes.get(path)
            if route is None:
                conn.sendall(_response(b"not found", status="404 Not Found"))
            else:
                route(conn)

    def static(self, path: str, body: bytes, *headers: str) -> None:
        self.routes[path] = lambda conn: conn.sendall(_response(body, *headers))

    def drip(self, data: bytes, interval: float) -> Route:
        """A route sending ``data`` one byte per ``interval`` seconds, then holding forever."""

        def route(conn: socket.socket) -> None:
            for byte in data:
                if self.stop.wait(interval):
                    return
                conn.sendall(bytes([byte]))
            self.stop.wait(30)

        return route

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[RawServer]:
    srv = RawServer()
    try:
        yield srv
    finally:
        srv.close()


def manifest(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "atlas_version": "1.0",
        "atlas_id": "com.example.bounded",
        "version": "1.0.0",
        "name": "Bounded",
        "description": "an atlas for the bounded-input tests",
    }
    doc.update(overrides)
    return doc


def load_within(seconds: float, url: str, **kwargs: Any) -> tuple[BaseException | None, float]:
    """Load ``url`` in a thread: ``(what it raised, elapsed)``; fails if it is still running."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            cra.load_atlas(url, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    elapsed = time.monotonic() - started
    assert outcome, f"load_atlas was still running after {elapsed:.1f}s"
    return outcome[0], elapsed


# -- 1. URL atlases: a total deadline, and no decompression ----------------------------------


class TestUrlDeadline:
    def test_a_server_dripping_header_bytes_is_cut_at_the_deadline(self, server):
        """A server sending a header byte every 0.1 s (each read succeeds) is cut at the timeout."""
        server.routes["/atlas.json"] = server.drip(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 500, 0.1)
        error, elapsed = load_within(6, f"{server.base}/atlas.json", timeout=1.0)
        assert isinstance(error, AtlasError)
        assert error.reason == "timeout"
        print(f"U3 drip headers: cut after {elapsed:.2f}s of a 1.00s deadline")
        assert elapsed < 1.0 * 1.1 + 0.2

    def test_a_server_dripping_the_body_is_cut_at_the_deadline(self, server):
        """A body dribbled out under its Content-Length is cut at the timeout too."""
        body = json.dumps(manifest()).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        server.routes["/atlas.json"] = server.drip(head + body, 0.05)
        error, elapsed = load_within(6, f"{server.base}/atlas.json", timeout=1.0)
        assert isinstance(error, AtlasError) and error.reason == "timeout"
        assert elapsed < 1.3

    def test_the_timeout_is_shared_by_the_manifest_and_every_context_file(self, server):
        """Six context files each 0.3 s slow, under a 1 s timeout: the load is cut at 1 s."""
        names = [f"context/f{i}.md" for i in range(6)]
        doc = manifest(context_packs=[{"pack_id": "p", "name": "P", "files": names}])
        server.static("/a/atlas.json", json.dumps(doc).encode())

        def slow(conn: socket.socket) -> None:
            if not server.stop.wait(0.3):
                conn.sendall(_response(b"# notes\n"))

        for name in names:
            server.routes[f"/a/{name}"] = slow
        error, elapsed = load_within(6, f"{server.base}/a/atlas.json", timeout=1.0)
        assert isinstance(error, AtlasError) and error.reason == "timeout", error
        print(f"U3 shared deadline: 6 files x 0.3s cut after {elapsed:.2f}s of 1.00s")
        assert elapsed < 1.3

    def test_a_deadline_already_past_refuses_before_connecting(self, server):
        """``fetch_bytes`` with a spent shared deadline raises timeout and sends nothing."""
        with pytest.raises(AtlasError) as caught:
            fetch_bytes(f"{server.base}/x", max_bytes=10, timeout=1, deadline=time.monotonic())
        assert caught.value.reason == "timeout"
        assert server.requests == []

    def test_fetch_bytes_alone_has_its_own_deadline(self, server):
        """Without a shared deadline, ``timeout`` starts when the fetch does."""
        server.static("/x", b"hello")
        assert fetch_bytes(f"{server.base}/x", max_bytes=10, timeout=2) == b"hello"

    def test_a_socket_connected_after_the_deadline_is_shut_at_once(self):
        """The watchdog shuts a connection that completes after it fired."""
        watchdog = _Watchdog(0)
        while not watchdog.fired:
            time.sleep(0.01)
        left, right = socket.socketpair()
        with left, right:

            class Stream:
                def get_extra_info(self, name: str) -> object:
                    return left

            watchdog.trace("connection.connect_tcp.started", {})
            watchdog.trace("connection.connect_tcp.complete", {"return_value": Stream()})
            assert left.recv(1) == b""  # shut down: reads end at once
        watchdog.cancel()

    def test_a_fast_atlas_with_context_still_loads(self, server):
        """The shared deadline leaves a well-behaved atlas alone."""
        doc = manifest(context_packs=[{"pack_id": "p", "name": "P", "files": ["c.md"]}])
        server.static("/a/atlas.json", json.dumps(doc).encode())
        server.static("/a/c.md", b"# notes\n")
        atlas = cra.load_atlas(f"{server.base}/a/atlas.json", timeout=2.0)
        assert atlas.context_files == {"c.md": "# notes\n"}


def _bomb(encoding: str, size: int) -> bytes:
    if encoding == "gzip":
        return gzip.compress(b" " * size, compresslevel=9)
    if encoding == "deflate":
        return zlib.compress(b" " * size, 9)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(b" " * size)
    # brotli is not installed here: the bytes are never decoded, only the header matters.
    return b"\x1b\xff\xff\x7f" + b"\x00" * 64


class TestUrlEncodings:
    @pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", "br", "gzip, zstd"])
    def test_an_encoded_body_is_refused_without_decoding(self, server, encoding):
        """A server ignoring ``Accept-Encoding: identity`` with a 64 MiB bomb is refused."""
        body = _bomb(encoding.split(",")[-1].strip(), 64 * 1024 * 1024)
        server.static("/atlas.json", body, f"Content-Encoding: {encoding}")
        error, elapsed = load_within(10, f"{server.base}/atlas.json", max_bytes=4096, timeout=5)
        assert isinstance(error, AtlasError), error
        assert error.reason == "encoding_refused"
        assert "identity" in server.requests[0].lower()
        print(f"U2 {encoding} bomb of {len(body)} bytes: refused in {elapsed * 1000:.0f} ms")

    def test_identity_is_accepted(self, server):
        """``Content-Encoding: identity`` is no encoding."""
        server.static("/atlas.json", json.dumps(manifest()).encode(), "Content-Encoding: identity")
        assert cra.load_atlas(f"{server.base}/atlas.json").atlas_id == "com.example.bounded"


@st.composite
def _responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from(["200 OK", "404 Not Found", "500 Oops", "302 Found"]))
    headers = draw(
        st.lists(
            st.sampled_from(
                [
                    "Content-Encoding: gzip",
                    "Content-Encoding: zstd",
                    "Content-Encoding: identity",
                    "Transfer-Encoding: chunked",
                    "Content-Length: 5",
                    "Content-Length: 99999999",
                    "Location: http://example.invalid/x",
                    "Location: /atlas.json",
                    "Content-Type: application/json",
                ]
            ),
            max_size=3,
            unique=True,
        )
    )
    body = draw(
        st.binary(max_size=64)
        | st.sampled_from([json.dumps(manifest()).encode(), b"{}", b"[]"])
        | st.just(gzip.compress(b" " * 100000))
    )
    cut = draw(st.booleans())
    raw = (f"HTTP/1.1 {status}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()
    return (raw + body)[: draw(st.integers(0, len(raw) + len(body)))] if cut else raw + body


class TestUrlProperty:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw=_responses())
    def test_any_response_gives_an_atlas_or_an_atlas_error_in_bounded_time(self, raw):
        """Whatever bytes a server answers with: an Atlas or an AtlasError, within the timeout."""
        srv = RawServer()
        try:
            srv.routes["/atlas.json"] = lambda conn: conn.sendall(raw)
            error, elapsed = load_within(5, f"{srv.base}/atlas.json", max_bytes=4096, timeout=1)
        finally:
            srv.close()
        assert error is None or isinstance(error, AtlasError), repr(error)
        assert elapsed < 1.5


# -- 2. parameters_schema patterns run in linear time ------------------------------------------

_EVIL = "^(a+)+$"


class TestSchemaPatterns:
    def test_a_backtracking_pattern_does_not_hang_a_guarded_call(self):
        """``^(a+)+$`` on 40 a's and a '!' is decided at once (Python's re takes minutes)."""
        schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": _EVIL}}}
        started = time.perf_counter()
        error = first_error(schema, {"x": "a" * 40 + "!"})
        elapsed = time.perf_counter() - started
        print(f"P1 ^(a+)+$ on a 41-char argument: decided in {elapsed * 1000:.2f} ms")
        assert error is not None and error[0] == "/x"
        assert elapsed < 0.5
        assert first_error(schema, {"x": "a" * 40}) is None

    def test_pattern_properties_and_additional_properties_are_linear(self):
        """Keys are model-chosen too: patternProperties and additionalProperties use RE2."""
        schema = {
            "type": "object",
            "patternProperties": {_EVIL: {"type": "integer"}},
            "additionalProperties": False,
        }
        started = time.perf_counter()
        error = first_error(schema, {"a" * 40 + "!": 1})
        assert time.perf_counter() - started < 0.5
        assert error is not None
        assert first_error(schema, {"aaa": 1}) is None
        assert first_error(schema, {"aaa": "x"}) == ("/aaa", "'x' is not of type 'integer'")

    def test_property_names_pattern_is_linear(self):
        """A ``propertyNames`` pattern runs through the same linear engine."""
        schema = {"type": "object", "propertyNames": {"pattern": _EVIL}}
        started = time.perf_counter()
        assert first_error(schema, {"a" * 40 + "!": 1}) is not None
        assert time.perf_counter() - started < 0.5

    @pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)a", r"(?<!x)y"])
    def test_a_pattern_re2_cannot_run_refuses_the_call(self, pattern):
        """Backreferences and lookaround have no linear-time engine: calls fail closed."""
        schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}}}
        error = first_error(schema, {"x": "aa"})
        assert error is not None
        assert "itself invalid" in error[1] and "pattern" in error[1]

    def test_unevaluated_properties_beside_pattern_properties_is_refused(self):
        """jsonschema would match those keys with Python's re: the schema is refused instead."""
        schema = {"patternProperties": {"^a": {}}, "unevaluatedProperties": False}
        error = first_error(schema, {"a": 1})
        assert error is not None and "itself invalid" in error[1]

    def test_lint_reports_patterns_re2_cannot_run(self, make_manifest):
        """L015: a pattern with a backreference makes every call of the action refused."""
        action = {
            "action_id": "repo.read",
            "name": "Read",
            "description": "Read a repository by its owner and name",
            "risk_tier": "low",
            "parameters_schema": {
                "type": "object",
                "properties": {"x": {"type": "string", "pattern": r"(a)\1"}},
                "patternProperties": {"(?=b)": {}},
                "additionalProperties": False,
            },
        }
        report = lint_atlas(make_manifest(actions=[action]))
        found = [(f.code, f.path) for f in report.findings if f.code == "L015"]
        assert found == [
            ("L015", "/actions/0/parameters_schema/patternProperties/(?=b)"),
            ("L015", "/actions/0/parameters_schema/properties/x/pattern"),
        ]


class TestPatternEdges:
    def test_a_property_named_like_a_keyword_is_still_walked(self):
        """A property called ``enum`` holding a backreference pattern is found and refused."""
        schema = {"type": "object", "properties": {"enum": {"pattern": r"(a)\1"}}}
        assert [p.path for p in schema_problems(schema)] == ["/properties/enum/pattern"]
        error = first_error(schema, {"enum": "aa"})
        assert error is not None and "itself invalid" in error[1]

    def test_a_pattern_missed_by_the_walk_still_fails_closed(self, monkeypatch):
        """Should the walk miss a pattern, the call is refused when RE2 refuses it."""
        monkeypatch.setattr(_params, "schema_problems", lambda schema: [])
        schema = {"type": "object", "properties": {"y": {"pattern": r"(b)\1"}}}
        error = first_error(schema, {"y": "bb"})
        assert error is not None and "cannot run in linear time" in error[1]

    def test_pattern_properties_skip_non_objects(self):
        """``patternProperties`` says nothing about a value that is not an object."""
        schema = {"properties": {"a": {"patternProperties": {"^x": {"type": "integer"}}}}}
        assert first_error(schema, {"a": 1}) is None
        assert first_error(schema, {"a": {"xy": "s"}}) == ("/a/xy", "'s' is not of type 'integer'")

    def test_compiled_patterns_are_bounded(self, monkeypatch):
        """The RE2 cache drops its oldest pattern when full."""
        monkeypatch.setattr(_schema_rules, "_compiled", {})
        monkeypatch.setattr(_schema_rules, "_CACHE_SIZE", 2)
        for pattern in ("^a", "^b", "^c"):
            assert _schema_rules.search(pattern, pattern[1:])
        assert list(_schema_rules._compiled) == ["^b", "^c"]


class TestPatternProperty:
    # jsonschema's metaschema check compiles the pattern with Python's re, which warns about
    # some odd sets ("[1--"); the check itself is unchanged by this issue.
    @pytest.mark.filterwarnings("ignore::FutureWarning")
    @settings(max_examples=200, deadline=None)
    @given(
        pattern=st.text(alphabet="a+*?()|^$[]{}\\.1,-b", max_size=12),
        value=st.text(alphabet="ab!", max_size=60),
    )
    def test_any_pattern_on_any_argument_is_decided_quickly(self, pattern, value):
        """Any pattern, any argument: a verdict (or a refusal) in bounded time, never a hang."""
        schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}}}
        started = time.perf_counter()
        verdict = first_error(schema, {"x": value})
        assert time.perf_counter() - started < 0.5
        assert verdict is None or isinstance(verdict[1], str)


# -- 3. formats are enforced, or reported ------------------------------------------------------

_FORMATS = {
    "date-time": ("2024-01-02T03:04:05Z", "yesterday"),
    "date": ("2024-01-02", "2024-13-45"),
    "time": ("03:04:05Z", "25:99"),
    "uri": ("https://example.com/x", "not a uri"),
    "uri-reference": ("/x?y=1", "\\\\bad uri"),
    "hostname": ("example.com", "-bad-.com"),
    "email": ("a@example.com", "no-at-sign"),
    "ipv4": ("10.0.0.1", "10.0.0.300"),
    "ipv6": ("::1", "::g"),
    "uuid": ("12345678-1234-5678-1234-567812345678", "1234"),
    "duration": ("P1D", "1 day"),
    "uri-template": ("/x/{id}", "/x/{id"),
}


class TestFormats:
    @pytest.mark.parametrize("name", sorted(_FORMATS))
    def test_each_format_is_enforced(self, name):
        """Each format named in the brief is checked: the good value passes, the bad one fails."""
        good, bad = _FORMATS[name]
        schema = {"type": "object", "properties": {"v": {"type": "string", "format": name}}}
        assert first_error(schema, {"v": good}) is None
        assert first_error(schema, {"v": bad}) is not None, (name, bad)

    def test_github_ops_checks_its_date_time_and_uri_arguments(self, github_ops):
        """The example atlas's ``date-time`` and ``uri`` arguments are enforced at the gate."""
        atlas = cra.load_atlas(github_ops)
        checked = set()
        for action in atlas.actions:
            schema: Any = action.parameters_schema or {}
            for where, keyword, value in _walk(schema, ""):
                if keyword != "format":
                    continue
                sub = schema
                for part in where.split("/")[1:-1]:
                    sub = sub[part]
                wrapped = {"type": "object", "properties": {"v": sub}}
                assert first_error(wrapped, {"v": "not-a-" + value}) is not None, where
                assert first_error(wrapped, {"v": _FORMATS[value][0]}) is None, where
                checked.add(value)
        assert checked == {"date-time", "uri"}

    def test_lint_reports_a_format_nobody_checks(self, make_manifest):
        """L016: ``format: int32`` or a typo is not enforced, and lint says so."""
        action = {
            "action_id": "repo.read",
            "name": "Read",
            "description": "Read a repository by its owner and name",
            "risk_tier": "low",
            "parameters_schema": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "format": "int32"},
                    "when": {"type": "string", "format": "date-time"},
                    "at": {"type": "string", "format": "datetime"},
                    # no checker installed: rfc3987-syntax is left out (1.2 s per import)
                    "link": {"type": "string", "format": "iri"},
                },
                "additionalProperties": False,
            },
        }
        report = lint_atlas(make_manifest(actions=[action]))
        found = sorted(f.path for f in report.findings if f.code == "L016")
        assert found == [
            "/actions/0/parameters_schema/properties/at/format",
            "/actions/0/parameters_schema/properties/link/format",
            "/actions/0/parameters_schema/properties/n/format",
        ]

    def test_github_ops_has_no_unchecked_format(self, github_ops):
        """Every format the shipped example uses is one a checker enforces."""
        assert not [f for f in lint_atlas(github_ops).findings if f.code in ("L015", "L016")]


# -- 4. file names the OS refuses are AtlasErrors ----------------------------------------------


class TestFileNames:
    @pytest.mark.parametrize("name", ["a\x00b.md", "x" * 5000, "d/" * 3000 + "x"])
    def test_a_name_the_os_refuses_is_an_atlas_error(self, tmp_path, name):
        """NUL bytes and over-long names are AtlasErrors, never a bare ValueError."""
        with pytest.raises(AtlasError) as caught:
            cra.load_atlas(_write_atlas(tmp_path, [name]))
        assert caught.value.path == "/context_packs/0/files/0"

    def test_a_nul_in_the_manifest_path_is_an_atlas_error(self, tmp_path):
        """``load_atlas("a\\x00b.json")``: AtlasError bad_name, not ValueError."""
        with pytest.raises(AtlasError) as caught:
            cra.load_atlas(str(tmp_path / "a\x00b.json"))
        assert caught.value.reason == "bad_name"

    def test_cra_atlas_validate_reports_it_and_exits_1(self, tmp_path, capsys):
        """``cra atlas validate`` on such an atlas: a finding and exit 1, not exit 3."""
        directory = _write_atlas(tmp_path, ["a\x00b.md"])
        code = main(["atlas", "validate", str(directory)])
        captured = capsys.readouterr()
        assert code == 1, captured
        assert "bad_name" in captured.out + captured.err or "file name" in captured.out

    def test_a_nul_in_a_legacy_context_source_is_an_atlas_error(self, tmp_path):
        """``cra atlas convert`` of a legacy atlas naming ``a\\x00b.md``: AtlasError bad_name."""
        from cra_agents.tools import convert_legacy_atlas
        from tests.test_atlas_convert import legacy

        document = legacy(context_packs=[{"id": "a", "source": "context/a\x00b.md"}])
        (tmp_path / "atlas.json").write_text(json.dumps(document))
        with pytest.raises(AtlasError) as caught:
            convert_legacy_atlas(tmp_path)
        assert caught.value.reason == "bad_name"

    def test_a_nul_in_a_url_context_file_is_an_atlas_error(self, server):
        """A URL atlas naming ``a\\x00b.md`` fails as an AtlasError too."""
        doc = manifest(context_packs=[{"pack_id": "p", "name": "P", "files": ["a\x00b.md"]}])
        server.static("/a/atlas.json", json.dumps(doc).encode())
        with pytest.raises(AtlasError) as caught:
            cra.load_atlas(f"{server.base}/a/atlas.json", timeout=2)
        assert caught.value.path == "/context_packs/0/files/0"

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(name=st.text(max_size=40) | st.sampled_from(["\x00", "a\x00", "..", "/", "x" * 300]))
    def test_any_name_gives_bytes_none_or_an_atlas_error(self, name):
        """Whatever a manifest names, reading it returns bytes or None or raises AtlasError."""
        base = Path(__file__).parent / "harness"
        try:
            data = read_context_file(base, name, where="/x", source="t")
        except AtlasError:
            return
        assert data is None or isinstance(data, bytes)


def _write_atlas(tmp_path: Path, files: list[str]) -> Path:
    directory = tmp_path / "atlas"
    directory.mkdir(exist_ok=True)
    doc = manifest(context_packs=[{"pack_id": "p", "name": "P", "files": files}])
    (directory / "atlas.json").write_text(json.dumps(doc))
    return directory


# -- 5. invisible characters from traces are shown ---------------------------------------------

_INVISIBLE = "\u202e\u2066\u2069\u200b\u200d\u200f\u2060\u2064\ufeff\u00ad\U000e0041\u2028"


class TestTerminalStrings:
    def test_bidi_overrides_and_zero_width_characters_are_escaped(self):
        """Every format character (Cf) and line separator is written as an escape."""
        shown = clean("rm -rf /\u202eexe.txt\u200b\u200d\ufeff\u2028")
        assert shown == "rm -rf /\\u202eexe.txt\\u200b\\u200d\\ufeff\\u2028"
        assert clean("tag\U000e0041") == "tag\\U000e0041"
        assert clean("plain é 中文 \u00a0") == "plain é 中文 \u00a0"

    def test_trace_commands_escape_them(self, capsys, tmp_path, github_ops):
        """``cra trace show/tail/list/verify``: a bidi override in a trace never reaches stdout."""
        runtime = cra.Runtime(atlases=[github_ops], store=f"jsonl://{tmp_path}/t")
        session = runtime.create_session("bot\u202e", "Triage\u2066 the \u200bissues\ufeff")
        auth = runtime.authorize(session.session_id, "github.issue.list", {"repo": "a/b"})
        runtime.record_outcome(auth, error=RuntimeError("boom\u202egnp.exe\u2069"))
        runtime.end_session(session.session_id)
        runtime.close()
        path = tmp_path / "t" / f"{session.session_id}.trace.jsonl"
        for argv in (
            ["show", str(path)],
            ["tail", str(path)],
            ["list", "--store", f"jsonl://{tmp_path}/t"],
            ["verify", str(path)],
        ):
            code = main(["trace", *argv])
            out = capsys.readouterr().out
            assert code == 0, argv
            hidden = [c for c in out if unicodedata.category(c) == "Cf"]
            assert not hidden, (argv, hidden)
        main(["trace", "show", str(path)])
        assert "\\u202e" in capsys.readouterr().out

    def test_the_html_report_marks_them(self, tmp_path, github_ops):
        """The report shows ``\\u202e`` where the trace had an invisible override."""
        from cra_agents.report import render_report

        runtime = cra.Runtime(atlases=[github_ops], store=f"jsonl://{tmp_path}/t")
        session = runtime.create_session("bot", "Triage\u202e the issues")
        auth = runtime.authorize(session.session_id, "github.issue.list", {"repo": "a/b"})
        runtime.record_outcome(auth, error=RuntimeError("boom\u2066 \u200b"))
        runtime.end_session(session.session_id)
        runtime.close()
        page = render_report(tmp_path / "t" / f"{session.session_id}.trace.jsonl")
        assert not [c for c in page if unicodedata.category(c) == "Cf"]
        assert "\\u202e" in page and "\\u2066" in page

    @settings(max_examples=500, deadline=None)
    @given(text=st.text(st.characters(codec=None, exclude_categories=["Cs"]), max_size=30))
    def test_nothing_invisible_survives_and_everything_visible_does(self, text):
        """No Cc/Cf/Zl/Zp character survives clean(); every other character is kept as is."""
        shown = clean(text)
        assert not [c for c in shown if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
        kept = [c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp")]
        assert all(c in shown for c in kept)
        assert clean(shown) == shown


def test_invisible_sample_is_all_hidden():
    """The sample used above really is made of characters the rule hides."""
    assert {unicodedata.category(c) for c in _INVISIBLE} <= {"Cf", "Zl"}


def test_a_runtime_starts_without_building_grammars(github_ops):
    """The format checkers stay cheap to load: no lark grammars (rfc3987-syntax) per start."""
    code = (
        "import sys, cra_agents as cra; "
        f"cra.Runtime([{str(github_ops)!r}], store='memory://').close(); "
        "print(sorted(m for m in ('lark', 'rfc3987_syntax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
