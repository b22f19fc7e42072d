from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import cra_agents as cra

MANIFEST = {
    "atlas_version": "1.0",
    "atlas_id": "com.example.remote",
    "version": "1.0.0",
    "name": "Remote",
    "description": "served over HTTP",
    "context_packs": [
        {"pack_id": "guide", "name": "Guide", "files": ["context/guide.md", "context/gone.md"]},
        {"pack_id": "again", "name": "Again", "files": ["context/guide.md"]},
    ],
}
FILES = {
    "/atlases/remote/atlas.json": json.dumps(MANIFEST).encode(),
    "/atlases/remote/context/guide.md": b"# Guide\n\nBe careful.\n",
    "/atlases/remote/escape.json": json.dumps(
        dict(MANIFEST, context_packs=[{"pack_id": "x", "name": "x", "files": ["../secret.md"]}])
    ).encode(),
    "/atlases/remote/broken.json": json.dumps(
        dict(MANIFEST, context_packs=[{"pack_id": "x", "name": "x", "files": ["bad.md"]}])
    ).encode(),
    "/atlases/remote/bad.md": b"\xff\xfe not utf-8",
    "/atlases/remote/error.json": json.dumps(
        dict(MANIFEST, context_packs=[{"pack_id": "x", "name": "x", "files": ["boom.md"]}])
    ).encode(),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.endswith("boom.md"):
            self.send_response(500)
            self.end_headers()
            return
        body = FILES.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/atlases/remote"
    finally:
        server.shutdown()
        server.server_close()


class TestUrlContextPacks:
    def test_pack_files_are_fetched_relative_to_the_manifest(self, base_url):
        """Pack files of a URL atlas come from beside its manifest; a 404 is a missing file."""
        atlas = cra.load_atlas(f"{base_url}/atlas.json")
        assert atlas.context_files == {"context/guide.md": "# Guide\n\nBe careful.\n"}
        assert atlas.missing_files == ("context/gone.md",)

    def test_the_context_is_injected(self, base_url):
        """A remote atlas's pack reaches resolutions like a local one."""
        runtime = cra.Runtime([f"{base_url}/atlas.json"])
        session = runtime.create_session("agent", "Read the guide")
        resolution = runtime.resolve(cra.resolve_request(session))
        assert [b.content for b in resolution.context_blocks] == ["# Guide\n\nBe careful.\n"]

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            ("escape.json", "path_escape"),
            ("broken.json", "invalid_encoding"),
            ("error.json", "fetch_failed"),
        ],
    )
    def test_bad_pack_files_refuse_the_atlas(self, base_url, name, reason):
        """Escaping the atlas location, bad UTF-8 or a server error refuses the whole atlas."""
        with pytest.raises(cra.AtlasError) as info:
            cra.load_atlas(f"{base_url}/{name}")
        assert info.value.reason == reason
