from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cra_agents import AtlasError
from cra_agents._canonical import canonical_json
from cra_agents.atlas import Atlas, Finding, ValidationReport, load_atlas, validate_atlas
from cra_agents.protocol import AtlasManifest

GITHUB_OPS_FILES = {
    "context/issue-triage.md",
    "context/repo-safety.md",
    "context/pull-request-guide.md",
}


def action(action_id: str) -> dict[str, str]:
    return {"action_id": action_id, "name": action_id, "description": f"Does {action_id}."}


def pack(pack_id: str, files: list[str]) -> dict[str, object]:
    return {"pack_id": pack_id, "name": pack_id, "files": files}


def write_atlas(
    directory: Path, manifest: dict[str, object], files: dict[str, str] | None = None
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "atlas.json").write_text(json.dumps(manifest), encoding="utf-8")
    for name, text in (files or {}).items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return directory


def load_error(source: Any, **kwargs: Any) -> AtlasError:
    with pytest.raises(AtlasError) as info:
        load_atlas(source, **kwargs)
    return info.value


def findings(report: ValidationReport) -> set[tuple[str, str, str]]:
    return {(f.code, f.severity, f.path) for f in report.findings}


def upstream_verdict(schema: dict[str, object], document: object) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(document)


@pytest.fixture(scope="module")
def upstream_atlas_schema(conformance_dir):
    return json.loads((conformance_dir / "schemas" / "atlas-manifest.schema.json").read_text())


class TestLoadSources:
    def test_directory(self, github_ops):
        """A directory loads its atlas.json and the context files its packs name."""
        atlas = load_atlas(github_ops)
        assert isinstance(atlas, Atlas)
        assert atlas.atlas_id == "com.example.github-ops"
        assert atlas.source == str(github_ops)
        assert atlas.base_dir == github_ops

    def test_json_file(self, github_ops):
        """A JSON file loads with its directory as the base for context files."""
        atlas = load_atlas(str(github_ops / "atlas.json"))
        assert atlas.source == str(github_ops / "atlas.json")
        assert atlas.base_dir == github_ops
        assert set(atlas.context_files) == GITHUB_OPS_FILES

    def test_dict(self, make_manifest):
        """A dict loads with no base directory and the '<dict>' source."""
        atlas = load_atlas(make_manifest(actions=[action("demo.run")]))
        assert atlas.source == "<dict>"
        assert atlas.base_dir is None
        assert [a.action_id for a in atlas.actions] == ["demo.run"]

    def test_dict_is_not_mutated(self, make_manifest):
        """Loading does not modify the caller's dict."""
        manifest = make_manifest(policies=[{"policy_id": "p", "type": "requires_approval"}])
        snapshot = json.loads(json.dumps(manifest))
        load_atlas(manifest)
        assert manifest == snapshot

    def test_manifest_model(self, make_manifest):
        """An AtlasManifest loads to an atlas with an equal manifest."""
        manifest = AtlasManifest.model_validate(make_manifest(actions=[action("demo.run")]))
        atlas = load_atlas(manifest)
        assert atlas.manifest == manifest
        assert atlas.digest.startswith("sha256:")

    def test_atlas_passthrough(self, make_manifest):
        """An already loaded Atlas is returned as is."""
        atlas = load_atlas(make_manifest())
        assert load_atlas(atlas) is atlas

    def test_accessors(self, github_ops):
        """atlas_id, version, actions, action() and repr read from the manifest."""
        atlas = load_atlas(github_ops)
        assert atlas.version == "1.2.0"
        listed = atlas.action("github.issue.list")
        assert listed is not None
        assert listed.risk_tier == "low"
        assert atlas.action("github.nope") is None
        assert repr(atlas).startswith("<Atlas com.example.github-ops@1.2.0 sha256:")


class TestRealAtlases:
    def test_github_ops_example(self, github_ops):
        """The shipped example loads: 15 actions, 3 context files read, none missing."""
        atlas = load_atlas(github_ops)
        assert len(atlas.actions) == 15
        assert set(atlas.context_files) == GITHUB_OPS_FILES
        assert atlas.missing_files == ()
        assert atlas.context_files["context/repo-safety.md"] == (
            github_ops / "context" / "repo-safety.md"
        ).read_text(encoding="utf-8")
        assert atlas.digest.startswith("sha256:")
        assert len(atlas.digest) == len("sha256:") + 64

    def test_context_files_read_only(self, github_ops):
        """The context files mapping cannot be modified."""
        atlas = load_atlas(github_ops)
        with pytest.raises(TypeError):
            atlas.context_files["context/new.md"] = "x"  # type: ignore[index]

    @pytest.mark.conformance
    def test_cra_development(self, conformance_dir):
        """The upstream self-governance atlas loads with its Rust-core spellings normalised."""
        atlas = load_atlas(conformance_dir / "atlases" / "cra-development.json")
        assert atlas.atlas_id == "dev.cra.self-governance"
        policy = atlas.manifest.policies[0]
        assert policy.type == "require_approval"
        assert policy.reason and policy.denial_reason == policy.reason
        assert atlas.action("trace.edit_event") is not None
        assert atlas.manifest.context_blocks
        assert atlas.missing_files == ()

    @pytest.mark.conformance
    def test_golden_simple_resolve(self, conformance_dir):
        """The golden atlas loads; its one context file is absent and reported as missing."""
        atlas = load_atlas(conformance_dir / "golden" / "simple-resolve")
        assert atlas.atlas_id == "com.cra.conformance.simple"
        assert len(atlas.actions) == 5
        assert atlas.missing_files == ("context/overview.md",)
        assert dict(atlas.context_files) == {}

    @pytest.mark.conformance
    def test_legacy_format_refused(self, conformance_dir):
        """A legacy 0.1 atlas is refused with a version mismatch and a conversion hint."""
        err = load_error(conformance_dir / "atlases" / "github-ops-legacy")
        assert err.code == "ATLAS_VERSION_MISMATCH"
        assert err.reason == "unsupported_version"
        assert err.path == "/atlas_version"
        assert "cra atlas convert" in str(err)


class TestMalformed:
    @pytest.mark.parametrize(
        ("overrides", "path"),
        [
            pytest.param(
                {"policies": [{"policy_id": "p", "type": "deny", "efect": "allow"}]},
                "/policies/0/efect",
                id="unknown-policy-key",
            ),
            pytest.param({"efect": "allow"}, "/efect", id="unknown-top-level-key"),
            pytest.param({"name": 5}, "/name", id="wrong-type"),
            pytest.param({"actions": {"a.b": {}}}, "/actions", id="actions-not-a-list"),
            pytest.param({"atlas_id": "Com.Example"}, "/atlas_id", id="bad-atlas-id"),
            pytest.param({"version": "1.0"}, "/version", id="bad-version"),
            pytest.param(
                {"policies": [{"policy_id": "p", "type": "forbid"}]},
                "/policies/0/type",
                id="unknown-policy-type",
            ),
            pytest.param(
                {"actions": [action("Bad.Action")]}, "/actions/0/action_id", id="bad-action-id"
            ),
            pytest.param(
                {"context_packs": [{**pack("p", []), "priority": 5000}]},
                "/context_packs/0/priority",
                id="priority-out-of-range",
            ),
        ],
    )
    def test_schema_error_path(self, make_manifest, overrides, path):
        """A schema violation names the JSON pointer of the offending field."""
        err = load_error(make_manifest(**overrides))
        assert err.reason == "schema"
        assert err.code == "INVALID_ATLAS_MANIFEST"
        assert err.path == path
        assert err.details["errors"][0]["path"] == path
        assert f" at {path} " in str(err)

    def test_missing_required_field(self, make_manifest):
        """A missing required field is reported at its own path."""
        manifest = make_manifest()
        del manifest["description"]
        assert load_error(manifest).path == "/description"

    def test_several_errors_summarised(self, make_manifest):
        """Every violation is listed in details, the first in the message."""
        err = load_error(make_manifest(name=5, version="x"))
        assert {e["path"] for e in err.details["errors"]} == {"/name", "/version"}
        assert "(and 1 more)" in str(err)

    @pytest.mark.parametrize("version", ["0.1", "2.0", None])
    def test_unsupported_atlas_version(self, make_manifest, version):
        """Any atlas_version but '1.0' is a version mismatch at /atlas_version."""
        err = load_error(make_manifest(atlas_version=version))
        assert err.code == "ATLAS_VERSION_MISMATCH"
        assert err.path == "/atlas_version"
        assert ("cra atlas convert" in str(err)) == (version == "0.1")

    def test_duplicate_key(self, tmp_path):
        """A duplicate key in the file is refused, naming the file."""
        path = tmp_path / "atlas.json"
        path.write_text('{"atlas_version": "1.0", "atlas_version": "1.0"}')
        err = load_error(path)
        assert err.reason == "duplicate_key"
        assert err.source == str(path)

    def test_too_large(self, tmp_path, make_manifest):
        """A manifest over max_bytes is refused before parsing."""
        path = tmp_path / "atlas.json"
        path.write_text(json.dumps(make_manifest()))
        assert load_error(path, max_bytes=64).reason == "too_large"
        assert load_atlas(path, max_bytes=path.stat().st_size).atlas_id == "com.example.test"

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("", "empty"),
            ("[]", "not_an_object"),
            ('{"atlas_version": "1.0",}', "invalid_json"),
            ('{"n": NaN}', "non_finite_number"),
        ],
    )
    def test_unparseable_file(self, tmp_path, text, reason):
        """Files that are not one strict JSON object are refused with a reason slug."""
        path = tmp_path / "atlas.json"
        path.write_text(text)
        assert load_error(path).reason == reason

    def test_nonexistent_path(self, tmp_path):
        """A path that is neither a directory nor a file is not_found."""
        err = load_error(tmp_path / "nowhere" / "atlas.json")
        assert err.reason == "not_found"
        assert err.code == "ATLAS_LOAD_ERROR"

    def test_directory_without_atlas_json(self, tmp_path):
        """A directory without atlas.json is not_found."""
        err = load_error(tmp_path)
        assert err.reason == "not_found"
        assert err.code == "ATLAS_LOAD_ERROR"

    @pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
    def test_fifo_refused_without_blocking(self, tmp_path):
        """A path that is neither a directory nor a regular file is refused at once."""
        fifo = tmp_path / "atlas.json"
        os.mkfifo(fifo)
        outcome: dict[str, BaseException] = {}

        def load() -> None:
            try:
                load_atlas(fifo)
            except Exception as exc:  # noqa: BLE001 - recorded and checked below
                outcome["error"] = exc

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        thread.join(1.0)
        blocked = thread.is_alive()
        if blocked:  # release the reader: a writer that opens and closes gives it EOF
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(5.0)
        assert not blocked, "load_atlas blocked on a FIFO"
        error = outcome["error"]
        assert isinstance(error, AtlasError)
        assert error.code == "ATLAS_LOAD_ERROR"

    def test_dict_value_without_canonical_form(self, make_manifest):
        """A dict holding a value canonical JSON cannot carry is refused, not hashed."""
        err = load_error(make_manifest(metadata={"x": math.nan}))
        assert err.reason == "invalid_json"


class TestContextFiles:
    @pytest.mark.parametrize("name", ["../x.md", "context/../../x.md", "/etc/hostname"])
    def test_path_escape(self, tmp_path, make_manifest, name):
        """A pack file outside the atlas directory is refused at its pointer."""
        (tmp_path / "x.md").write_text("secret")
        directory = write_atlas(
            tmp_path / "atlas",
            make_manifest(context_packs=[pack("p", ["context/ok.md", name])]),
            {"context/ok.md": "fine"},
        )
        err = load_error(directory)
        assert err.reason == "path_escape"
        assert err.path == "/context_packs/0/files/1"

    def test_symlink_escape(self, tmp_path, make_manifest):
        """A symlink pointing outside the atlas directory is an escape too."""
        (tmp_path / "outside.md").write_text("secret")
        directory = write_atlas(
            tmp_path / "atlas", make_manifest(context_packs=[pack("p", ["context/link.md"])])
        )
        (directory / "context").mkdir()
        (directory / "context" / "link.md").symlink_to(tmp_path / "outside.md")
        assert load_error(directory).reason == "path_escape"

    def test_missing_file_skipped(self, tmp_path, make_manifest):
        """A pack file that does not exist is listed in missing_files, the rest are read."""
        directory = write_atlas(
            tmp_path / "atlas",
            make_manifest(context_packs=[pack("p", ["context/a.md", "context/gone.md"])]),
            {"context/a.md": "# A"},
        )
        atlas = load_atlas(directory)
        assert dict(atlas.context_files) == {"context/a.md": "# A"}
        assert atlas.missing_files == ("context/gone.md",)

    def test_missing_file_listed_once(self, tmp_path, make_manifest):
        """A missing file shared by two packs is reported once."""
        directory = write_atlas(
            tmp_path / "atlas",
            make_manifest(
                context_packs=[pack("a", ["context/gone.md"]), pack("b", ["context/gone.md"])]
            ),
        )
        assert load_atlas(directory).missing_files == ("context/gone.md",)

    def test_context_file_not_utf8(self, tmp_path, make_manifest):
        """A context file that is not UTF-8 is refused at its pointer."""
        directory = write_atlas(
            tmp_path / "atlas", make_manifest(context_packs=[pack("p", ["context/bad.md"])])
        )
        (directory / "context").mkdir()
        (directory / "context" / "bad.md").write_bytes(b"\xff\xfe bad")
        err = load_error(directory)
        assert err.reason == "invalid_encoding"
        assert err.path == "/context_packs/0/files/0"

    def test_context_file_too_large(self, tmp_path, make_manifest):
        """A context file over max_bytes is refused."""
        directory = write_atlas(
            tmp_path / "atlas",
            make_manifest(context_packs=[pack("p", ["context/big.md"])]),
            {"context/big.md": "x" * 2000},
        )
        assert load_error(directory, max_bytes=1000).reason == "too_large"

    def test_dict_reads_no_files(self, make_manifest):
        """A dict has no directory: every pack file is missing, none is read or checked."""
        atlas = load_atlas(make_manifest(context_packs=[pack("p", ["../x.md", "a.md"])]))
        assert atlas.context_files == {}
        assert atlas.missing_files == ("../x.md", "a.md")


class TestDigestPin:
    def test_file_pin(self, github_ops):
        """A pin of the exact file bytes passes, with or without the sha256: prefix."""
        hexdigest = hashlib.sha256((github_ops / "atlas.json").read_bytes()).hexdigest()
        for pin in (hexdigest, f"sha256:{hexdigest}", hexdigest.upper()):
            assert load_atlas(github_ops, sha256=pin).atlas_id == "com.example.github-ops"

    def test_file_pin_mismatch(self, github_ops):
        """A wrong pin is refused as digest_mismatch naming both digests."""
        err = load_error(github_ops, sha256="0" * 64)
        assert err.reason == "digest_mismatch"
        assert "sha256:" + "0" * 64 in str(err)

    def test_pin_checked_before_parsing(self, tmp_path):
        """A wrong pin wins over a broken document: nothing unpinned is parsed."""
        path = tmp_path / "atlas.json"
        path.write_text("{not json")
        assert load_error(path, sha256="1" * 64).reason == "digest_mismatch"

    def test_dict_pin(self, make_manifest):
        """A dict is pinned by the SHA-256 of its canonical JSON."""
        manifest = make_manifest(actions=[action("demo.run")])
        pin = hashlib.sha256(canonical_json(manifest)).hexdigest()
        assert load_atlas(manifest, sha256=pin).atlas_id == "com.example.test"
        assert load_atlas(manifest, sha256=f"sha256:{pin}").atlas_id == "com.example.test"

    def test_dict_pin_mismatch(self, make_manifest):
        """A dict whose canonical JSON does not match the pin is refused."""
        manifest = make_manifest()
        pin = hashlib.sha256(canonical_json(manifest)).hexdigest()
        manifest["name"] = "Changed"
        assert load_error(manifest, sha256=pin).reason == "digest_mismatch"


class TestDigest:
    def test_stable_across_loads(self, github_ops):
        """Loading the same atlas twice, by directory or file, gives the same digest."""
        first = load_atlas(github_ops)
        assert load_atlas(github_ops).digest == first.digest
        assert load_atlas(github_ops / "atlas.json").digest == first.digest

    def test_changes_with_context_file(self, github_ops, tmp_path):
        """Editing one context file changes the digest."""
        copy = shutil.copytree(github_ops, tmp_path / "github-ops")
        before = load_atlas(copy).digest
        assert before == load_atlas(github_ops).digest
        with (copy / "context" / "repo-safety.md").open("a", encoding="utf-8") as handle:
            handle.write("\nOne more rule.\n")
        assert load_atlas(copy).digest != before

    def test_changes_with_manifest(self, github_ops, tmp_path):
        """Changing one manifest value changes the digest."""
        copy = shutil.copytree(github_ops, tmp_path / "github-ops")
        manifest = json.loads((copy / "atlas.json").read_text(encoding="utf-8"))
        manifest["actions"][0]["risk_tier"] = "critical"
        (copy / "atlas.json").write_text(json.dumps(manifest), encoding="utf-8")
        assert load_atlas(copy).digest != load_atlas(github_ops).digest

    def test_ignores_formatting(self, github_ops, tmp_path):
        """Re-indenting and re-ordering keys in atlas.json leaves the digest unchanged."""
        copy = shutil.copytree(github_ops, tmp_path / "github-ops")
        manifest = json.loads((copy / "atlas.json").read_text(encoding="utf-8"))
        reordered = dict(reversed(list(manifest.items())))
        (copy / "atlas.json").write_text(json.dumps(reordered, indent=7), encoding="utf-8")
        assert load_atlas(copy).digest == load_atlas(github_ops).digest


class _AtlasHandler(BaseHTTPRequestHandler):
    server: _AtlasServer

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""

    def _send(self, status: int, body: bytes = b"", *, length: bool = True, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, Location=location)

    def do_GET(self) -> None:
        """Serve the routes the URL tests use."""
        port = self.server.server_address[1]
        body = self.server.body
        if self.path == "/atlas.json":
            self._send(200, body)
        elif self.path == "/redirect":
            self._redirect("/atlas.json")
        elif self.path == "/absolute-redirect":
            self._redirect(f"http://127.0.0.1:{port}/atlas.json")
        elif self.path == "/other-host":
            self._redirect(f"http://localhost:{port}/atlas.json")
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path == "/big":
            self._send(200, b" " * 5000)
        elif self.path == "/big-declared":
            # Declares far more than it sends: only the header can have refused it.
            self._send(200, b" " * 10, length=False, Content_Length=str(10**9))
        elif self.path == "/endless":
            # No Content-Length and no end: only aborting the stream can refuse it.
            self._send(200, length=False, Connection="close")
            with contextlib.suppress(OSError):  # the client hung up, as it should
                while not self.server.release.is_set():
                    self.wfile.write(b" " * 65536)
        elif self.path == "/slow":
            self.server.release.wait(5.0)
            with contextlib.suppress(OSError):  # the client gave up long ago
                self._send(200, body)
        else:
            self._send(404, b"not found")


class _AtlasServer(ThreadingHTTPServer):
    body: bytes
    release: threading.Event


@pytest.fixture(scope="module")
def atlas_server(github_ops):
    """A local HTTP server serving the github-ops manifest; yields its base URL."""
    server = _AtlasServer(("127.0.0.1", 0), _AtlasHandler)
    server.body = (github_ops / "atlas.json").read_bytes()
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5.0)


class TestURL:
    def test_load(self, atlas_server, github_ops):
        """An atlas loads over HTTP; its source is the URL and no context file is read."""
        base, _ = atlas_server
        atlas = load_atlas(f"{base}/atlas.json")
        assert atlas.source == f"{base}/atlas.json"
        assert atlas.base_dir is None
        assert len(atlas.actions) == 15
        assert set(atlas.missing_files) == GITHUB_OPS_FILES
        assert atlas.manifest == load_atlas(github_ops).manifest

    @pytest.mark.parametrize("path", ["/redirect", "/absolute-redirect"])
    def test_same_host_redirect(self, atlas_server, path):
        """A redirect to the same scheme, host and port is followed."""
        base, _ = atlas_server
        assert load_atlas(f"{base}{path}").atlas_id == "com.example.github-ops"

    def test_other_host_redirect_refused(self, atlas_server):
        """A redirect to another host name (localhost vs 127.0.0.1) is refused."""
        base, _ = atlas_server
        err = load_error(f"{base}/other-host")
        assert err.reason == "redirect_refused"
        assert err.code == "ATLAS_LOAD_ERROR"
        assert "localhost" in str(err)

    def test_redirect_loop_refused(self, atlas_server):
        """A redirect loop stops after a few hops."""
        base, _ = atlas_server
        assert load_error(f"{base}/loop").reason == "redirect_refused"

    @pytest.mark.parametrize("path", ["/big", "/big-declared", "/endless"])
    def test_too_large(self, atlas_server, path):
        """A body over max_bytes is refused from Content-Length or mid-stream, never read out."""
        base, _ = atlas_server
        assert load_error(f"{base}{path}", max_bytes=1000, timeout=2).reason == "too_large"

    def test_not_found(self, atlas_server):
        """An HTTP 404 is fetch_failed."""
        base, _ = atlas_server
        err = load_error(f"{base}/missing.json")
        assert err.reason == "fetch_failed"
        assert "404" in str(err)

    def test_timeout(self, atlas_server):
        """A server slower than the timeout is cut off with reason timeout."""
        base, _ = atlas_server
        err = load_error(f"{base}/slow", timeout=0.5)
        assert err.reason == "timeout"
        assert err.code == "ATLAS_LOAD_ERROR"

    def test_connection_refused(self, atlas_server):
        """Nothing listening is fetch_failed."""
        closed = ThreadingHTTPServer(("127.0.0.1", 0), _AtlasHandler)
        port = closed.server_address[1]
        closed.server_close()
        assert load_error(f"http://127.0.0.1:{port}/atlas.json", timeout=2).reason == (
            "fetch_failed"
        )

    def test_digest_pin(self, atlas_server):
        """A URL is pinned by the SHA-256 of the bytes served."""
        base, server = atlas_server
        pin = hashlib.sha256(server.body).hexdigest()
        assert load_atlas(f"{base}/atlas.json", sha256=pin).atlas_id == "com.example.github-ops"
        assert load_error(f"{base}/atlas.json", sha256="f" * 64).reason == "digest_mismatch"


class TestValidateRealAtlases:
    def test_github_ops_strict(self, github_ops):
        """The shipped example is strictly valid with no errors."""
        report = validate_atlas(github_ops)
        assert report.strict is True
        assert report.valid is True
        assert report.errors == []

    @pytest.mark.conformance
    def test_cra_development_strict(self, conformance_dir):
        """Strictly, the Rust-core spellings of cra-development.json are schema errors."""
        report = validate_atlas(conformance_dir / "atlases" / "cra-development.json")
        assert report.valid is False
        errors = {(f.code, f.path) for f in report.errors}
        assert ("E100", "/actions/0/action_id") in errors  # '_' in trace.edit_event
        assert ("E100", "/policies/0/type") in errors  # requires_approval
        assert {f.code for f in report.errors} == {"E100"}

    @pytest.mark.conformance
    def test_cra_development_lenient(self, conformance_dir):
        """Leniently it is valid, warning that one deny pattern matches no action."""
        report = validate_atlas(conformance_dir / "atlases" / "cra-development.json", strict=False)
        assert report.valid is True
        w007 = [f for f in report.warnings if f.code == "W007"]
        assert any(
            f.path == "/policies/1/actions/0" and "trace.create_hash_function" in f.message
            for f in w007
        )

    @pytest.mark.conformance
    def test_golden_missing_file_warning(self, conformance_dir):
        """The golden atlas is valid and warns about its missing context file."""
        report = validate_atlas(conformance_dir / "golden" / "simple-resolve")
        assert report.valid is True
        assert any(f.code == "W009" and "context/overview.md" in f.message for f in report.warnings)


CONFORMANCE_ATLAS_CASES = [
    pytest.param({"actions": [action("test.action")]}, True, None, id="atlas.manifest.valid"),
    pytest.param({"atlas_id": "InvalidID"}, False, "/atlas_id", id="atlas.manifest.invalid_id"),
    pytest.param({"version": "1.0"}, False, "/version", id="atlas.manifest.invalid_version"),
]


@pytest.mark.conformance
class TestConformanceAtlasCases:
    @pytest.mark.parametrize(("overrides", "valid", "path"), CONFORMANCE_ATLAS_CASES)
    def test_verdict(self, make_manifest, overrides, valid, path):
        """Each upstream atlas case gets the expected verdict, at the expected path."""
        report = validate_atlas(make_manifest(**overrides))
        assert report.valid is valid
        if path is not None:
            assert path in {f.path for f in report.errors}

    @pytest.mark.parametrize(("overrides", "valid", "path"), CONFORMANCE_ATLAS_CASES)
    def test_agrees_with_upstream_schema(
        self, make_manifest, upstream_atlas_schema, overrides, valid, path
    ):
        """Our strict verdict equals jsonschema's with the upstream Atlas schema."""
        manifest = make_manifest(**overrides)
        assert upstream_verdict(upstream_atlas_schema, manifest) is valid
        assert validate_atlas(manifest).valid is valid

    @pytest.mark.parametrize(("overrides", "valid", "path"), CONFORMANCE_ATLAS_CASES)
    def test_load_agrees(self, make_manifest, overrides, valid, path):
        """load_atlas accepts exactly the valid cases and points at the same field."""
        manifest = make_manifest(**overrides)
        if valid:
            assert load_atlas(manifest).actions[0].parameters_schema is None
        else:
            assert load_error(manifest).path == path


class TestValidateFindings:
    def test_minimal_manifest(self, make_manifest):
        """A minimal manifest is valid with only the no-license/no-authors infos."""
        report = validate_atlas(make_manifest())
        assert report.valid is True
        assert findings(report) == {("I001", "info", "/license"), ("I003", "info", "/authors")}

    def test_duplicate_action(self, make_manifest):
        """A repeated action_id is E005 at the second occurrence."""
        report = validate_atlas(make_manifest(actions=[action("a.b"), action("a.b")]))
        assert ("E005", "error", "/actions/1/action_id") in findings(report)
        assert report.valid is False

    def test_duplicate_policy(self, make_manifest):
        """A repeated policy_id is E007 at the second occurrence."""
        policies = [
            {"policy_id": "p", "type": "deny", "actions": ["a.b"]},
            {"policy_id": "p", "type": "allow", "actions": ["a.*"]},
        ]
        report = validate_atlas(make_manifest(actions=[action("a.b")], policies=policies))
        assert ("E007", "error", "/policies/1/policy_id") in findings(report)

    def test_capability_unknown_action(self, make_manifest):
        """A capability naming an undeclared action is E012."""
        capability = {"capability_id": "c", "name": "C", "actions": ["a.b", "x.y"]}
        report = validate_atlas(make_manifest(actions=[action("a.b")], capabilities=[capability]))
        assert ("E012", "error", "/capabilities/0/actions/1") in findings(report)

    def test_rate_limit_without_parameters(self, make_manifest):
        """A rate_limit policy without parameters is E011."""
        policy = {"policy_id": "rl", "type": "rate_limit", "actions": ["a.b"]}
        report = validate_atlas(make_manifest(actions=[action("a.b")], policies=[policy]))
        assert ("E011", "error", "/policies/0") in findings(report)

    def test_rate_limit_without_max_calls(self, make_manifest):
        """A rate_limit policy missing max_calls is E009 at that parameter."""
        policy = {
            "policy_id": "rl",
            "type": "rate_limit",
            "actions": ["a.b"],
            "parameters": {"window_seconds": 60},
        }
        report = validate_atlas(make_manifest(actions=[action("a.b")], policies=[policy]))
        assert ("E009", "error", "/policies/0/parameters/max_calls") in findings(report)
        assert not any(f.code == "E010" for f in report.findings)

    @pytest.mark.parametrize("bad", [0, True, "10", 1.5])
    def test_rate_limit_bad_window(self, make_manifest, bad):
        """window_seconds must be an integer of at least 1 (E010); booleans do not count."""
        policy = {
            "policy_id": "rl",
            "type": "rate_limit",
            "actions": ["a.b"],
            "parameters": {"max_calls": 1, "window_seconds": bad},
        }
        report = validate_atlas(make_manifest(actions=[action("a.b")], policies=[policy]))
        assert ("E010", "error", "/policies/0/parameters/window_seconds") in findings(report)

    def test_policy_without_actions(self, make_manifest):
        """A policy without actions is the E008 warning and leaves the atlas valid."""
        report = validate_atlas(
            make_manifest(actions=[action("a.b")], policies=[{"policy_id": "p", "type": "deny"}])
        )
        assert ("E008", "warning", "/policies/0") in findings(report)
        assert report.valid is True

    @pytest.mark.parametrize("kind", ["budget", "scope"])
    def test_unenforced_policy_type(self, make_manifest, kind):
        """budget and scope policies are accepted with the W008 warning."""
        policy = {"policy_id": "p", "type": kind, "actions": ["a.b"]}
        report = validate_atlas(make_manifest(actions=[action("a.b")], policies=[policy]))
        assert ("W008", "warning", "/policies/0/type") in findings(report)
        assert report.valid is True

    def test_unmatched_pattern(self, make_manifest):
        """A policy pattern that matches no declared action is W007."""
        policy = {"policy_id": "p", "type": "deny", "actions": ["a.*", "z.*"]}
        report = validate_atlas(make_manifest(actions=[action("a.b")], policies=[policy]))
        assert [f.path for f in report.findings if f.code == "W007"] == ["/policies/0/actions/1"]

    def test_unknown_also_inject(self, make_manifest):
        """A context block also injecting an unknown block is W010."""
        block = {"context_id": "x", "content": "hi", "also_inject": ["nope"]}
        report = validate_atlas(make_manifest(context_blocks=[block]))
        assert ("W010", "warning", "/context_blocks/0/also_inject/0") in findings(report)

    def test_findings_sorted_by_severity(self, make_manifest):
        """Errors come before warnings, warnings before infos."""
        report = validate_atlas(
            make_manifest(
                actions=[action("a.b"), action("a.b")],
                policies=[{"policy_id": "p", "type": "budget"}],
            )
        )
        order = {"error": 0, "warning": 1, "info": 2}
        severities = [order[f.severity] for f in report.findings]
        assert severities == sorted(severities)

    def test_unreadable_source(self, tmp_path):
        """A source that cannot be read gives exactly one E000 finding."""
        report = validate_atlas(tmp_path / "missing.json")
        assert report.valid is False
        assert [f.code for f in report.findings] == ["E000"]
        assert "no such file" in report.findings[0].message

    def test_path_escape_is_e000(self, tmp_path, make_manifest):
        """A context file escaping the directory is an E000 error at its pointer."""
        directory = write_atlas(
            tmp_path / "atlas", make_manifest(context_packs=[pack("p", ["../x.md"])])
        )
        report = validate_atlas(directory)
        assert ("E000", "error", "/context_packs/0/files/0") in findings(report)

    def test_as_dict_shape(self, make_manifest):
        """as_dict() is plain JSON: source, strict, valid and findings with four string keys."""
        report = validate_atlas(make_manifest(extra=1))
        data = json.loads(json.dumps(report.as_dict()))
        assert set(data) == {"source", "strict", "valid", "findings"}
        assert data["source"] == "<dict>"
        assert data["strict"] is True
        assert data["valid"] is False
        assert data["findings"]
        for finding in data["findings"]:
            assert set(finding) == {"code", "severity", "path", "message"}
            assert all(isinstance(value, str) for value in finding.values())

    def test_finding_as_dict(self):
        """A Finding serialises to its four fields."""
        finding = Finding("E005", "error", "/actions/1/action_id", "dup")
        assert finding.as_dict() == {
            "code": "E005",
            "severity": "error",
            "path": "/actions/1/action_id",
            "message": "dup",
        }

    def test_lenient_verdict_matches_load(self, make_manifest):
        """What validate_atlas(strict=False) calls valid, load_atlas loads."""
        manifest = make_manifest(metadata={"ratio": math.nan})
        with pytest.raises(AtlasError):
            load_atlas(manifest)
        assert validate_atlas(manifest, strict=False).valid is False


class TestStrictSchema:
    def test_unknown_top_level_key(self, make_manifest):
        """Strict validation rejects an unknown top-level key."""
        report = validate_atlas(make_manifest(extensions={"x": 1}))
        assert report.valid is False
        assert any(f.code == "E100" and "extensions" in f.message for f in report.errors)

    def test_lenient_reports_unknown_key_at_its_path(self, make_manifest):
        """Lenient validation reports the unknown key at its own pointer."""
        report = validate_atlas(make_manifest(extensions={"x": 1}), strict=False)
        assert ("E100", "error", "/extensions") in findings(report)

    def test_context_blocks_accepted(self, make_manifest):
        """Inline context_blocks, the documented extension, pass strict validation."""
        block = {
            "context_id": "guide",
            "name": "Guide",
            "priority": 10,
            "content": "# Hi",
            "keywords": ["guide"],
            "inject_mode": "always",
        }
        report = validate_atlas(make_manifest(context_blocks=[block]))
        assert report.valid is True
        assert report.errors == []

    @pytest.mark.parametrize(
        ("overrides", "path"),
        [
            ({"policies": [{"policy_id": "p", "type": "deny", "reason": "no"}]}, "/policies/0"),
            ({"policies": [{"policy_id": "p", "type": "requires_approval"}]}, "/policies/0/type"),
            ({"actions": [action("a.do_it")]}, "/actions/0/action_id"),
            ({"license": None}, "/license"),
        ],
    )
    def test_lenient_only_forms_are_strict_errors(self, make_manifest, overrides, path):
        """What only the lenient reader accepts is an E100 error under strict validation."""
        manifest = make_manifest(**overrides)
        assert load_atlas(manifest).atlas_id == "com.example.test"
        report = validate_atlas(manifest)
        assert ("E100", "error", path) in findings(report)

    def test_validates_loaded_atlas_and_manifest(self, github_ops):
        """An Atlas or AtlasManifest can be validated directly."""
        atlas = load_atlas(github_ops)
        assert validate_atlas(atlas).valid is True
        report = validate_atlas(atlas.manifest)
        assert report.source == "<manifest>"
        assert report.valid is True
