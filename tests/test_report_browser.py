"""The HTML trace report in a real browser: headless Chromium (Debian package ``chromium``).

A report of a real session (allowed, denied, approved and failed calls, a resolution with
injected context, a signed checkpoint) is rendered to a file and opened in Chromium. The page
must render (screenshot with the bar colours), carry the expected elements after its script
ran (``--dump-dom``), log nothing to the console and request nothing from the network. The
two detectors (console lines in Chromium's log, page requests in its NetLog) are themselves
tested on deliberately broken pages, so they cannot pass silently.

Skipped when Chromium is missing, except on CI (``CI=true``), where it must be installed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import cra_agents as cra
from cra_agents.report import DECISION_COLORS, Timeline, timeline, write_report
from cra_agents.trace import generate_signing_key, sign_checkpoint
from tests.conftest import EXAMPLES_DIR
from tests.harness.browser import (
    BrowserRun,
    decode_png,
    dump_dom,
    find_chromium,
    screenshot,
)

HOSTILE = "<script>alert('xss')</script>"
TIMEOUT_S = 30.0
_timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The Chromium binary (skip without it; fail on CI)."""
    binary = find_chromium()
    if binary is None:
        message = (
            "Chromium is not installed: install the Debian package chromium "
            "(apt-get install -y chromium), or set CRA_TEST_CHROMIUM to its binary"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@dataclass
class Rendered:
    """A real session's report on disk."""

    page: Path
    html: str
    timeline: Timeline
    workdir: Path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Run a real session through the runtime and write its report."""
    workdir = tmp_path_factory.mktemp("report-browser")
    runtime = cra.Runtime(
        atlases=[EXAMPLES_DIR / "github-ops"],
        store="memory://",
        approval_handler=lambda request: cra.ApprovalDecision(True, "alice@example.com", "ok"),
    )
    try:
        session = runtime.create_session("triage-bot", "Triage bug reports and label them")
        runtime.resolve(cra.resolve_request(session))

        def call(action: str, arguments: dict[str, object], error: str | None = None) -> None:
            try:
                auth = runtime.authorize(session.session_id, action, arguments)
            except cra.ActionDeniedError:
                return
            time.sleep(0.02)  # the tool's run, so the bars have some length
            failure = RuntimeError(error) if error else None
            runtime.record_outcome(auth, result={"ok": True}, error=failure)

        call("github.issue.list", {"repo": "acme/app"})
        call("github.issue.create", {"repo": "acme/app", "title": "Crash on start"})
        call("github.repo.delete", {"repo": "acme/app", "confirm_name": "acme/app"})
        call("github.pr.merge", {"repo": "acme/app", "pr_number": 7, "expected_head_sha": "a" * 40})
        call("github.issue.comment", {"repo": "acme/app", "issue_number": 7, "body": "x"}, HOSTILE)
        runtime.end_session(session.session_id)
        events = runtime.trace_events(session.session_id)
    finally:
        runtime.close()
    key = generate_signing_key()
    checkpoint = sign_checkpoint(events[:-2], key)
    verification = cra.verify_chain(events, checkpoints=[checkpoint], verify_key=key.public_key())
    assert verification.valid
    page = write_report(
        events, workdir / "report.html", checkpoint=checkpoint, verification=verification
    )
    return Rendered(page, page.read_text("utf-8"), timeline(events), workdir)


def _run(name: str, run: BrowserRun) -> BrowserRun:
    _timings[name] = run.seconds
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.seconds < TIMEOUT_S
    return run


def _csp_with_script(html: str, script: str) -> str:
    """``html`` with ``script`` appended and allowed by the page's CSP (by its hash)."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    html = html.replace("script-src ", f"script-src 'sha256-{digest}' ", 1)
    return html.replace("</body>", f"<script>{script}</script></body>", 1)


class TestReportInChromium:
    def test_screenshot_shows_the_timeline(self, chromium: Path, rendered: Rendered) -> None:
        """A 1280x1800 PNG with real content: many colours, every bar colour, no console line."""
        png = rendered.workdir / "report.png"
        run = _run("screenshot", screenshot(chromium, rendered.page, png, workdir=rendered.workdir))
        print(f"\nscreenshot: {png}")
        assert run.console == []
        image = decode_png(png.read_bytes())
        assert (image.width, image.height) == (1280, 1800)
        colors = image.colors()
        assert len(colors) > 300  # text anti-aliasing, badges, bars: not a blank page
        white = colors.get(b"\xff\xff\xff", 0)
        assert white < 0.95 * image.width * image.height
        for status in ("allowed", "approved", "denied", "failed"):
            rgb = bytes.fromhex(DECISION_COLORS[status].lstrip("#"))
            assert colors.get(rgb, 0) >= 40, f"{status} colour {rgb.hex()} not on the page"

    def test_dom_after_load(self, chromium: Path, rendered: Rendered) -> None:
        """Sections, one bar and one row per call, VALID, the script ran, nothing loaded."""
        run = _run("dump-dom", dump_dom(chromium, rendered.page, workdir=rendered.workdir))
        dom = run.stdout
        assert run.console == []
        assert run.page_requests() == []
        for section in ("summary", "timeline", "decisions", "approvals", "chain", "context"):
            assert f'<section id="{section}">' in dom
        assert '<details id="raw-events">' in dom
        calls = rendered.timeline.calls
        assert [c.status for c in calls] == ["allowed", "allowed", "denied", "approved", "failed"]
        assert len(re.findall(r'<rect class="bar bar-\w+"', dom)) == len(calls)
        table = dom.split('id="decision-table"', 1)[1].split("</table>", 1)[0]
        assert len(re.findall(r'<tr class="row-\w+"', table)) == len(calls)
        assert '<span class="badge badge-valid">VALID</span>' in dom
        assert "alice@example.com" in dom.split('id="approvals"', 1)[1]
        # The script un-hid the filters and made the headers sortable.
        assert '<fieldset id="decision-filters" class="filters">' in dom
        assert dom.count('class="num sortable"') == 3
        # The hostile error message is text: the page's own script is the only script element.
        assert dom.count("<script") == 1
        assert "&lt;script&gt;alert('xss')&lt;/script&gt;" in dom

    def test_sorting_and_filtering_work(self, chromium: Path, rendered: Rendered) -> None:
        """Clicking Seq twice sorts descending; unticking 'denied' hides the denied rows."""
        probe = (
            "var t=document.getElementById('decision-table');"
            "var seq=t.tHead.rows[0].cells[0];seq.click();seq.click();"
            "var rows=function(){return Array.prototype.slice.call(t.tBodies[0].rows);};"
            "var order=rows().map(function(r){return r.getAttribute('data-sequence');});"
            "document.querySelector('#decision-filters input[value=denied]').click();"
            "var hidden=rows().filter(function(r){return r.hidden;})"
            ".map(function(r){return r.getAttribute('data-status');});"
            "var out=document.createElement('output');out.id='probe';"
            "out.textContent=order.join(',')+'|'+hidden.join(',')+'|'+seq.getAttribute('aria-sort');"
            "document.body.appendChild(out);"
        )
        page = rendered.workdir / "probe.html"
        page.write_text(_csp_with_script(rendered.html, probe), "utf-8")
        run = _run("probe", dump_dom(chromium, page, workdir=rendered.workdir))
        assert run.console == []
        found = re.search(r'<output id="probe">([^<]*)</output>', run.stdout)
        assert found is not None, run.stdout[-2000:]
        order, hidden, aria = found.group(1).split("|")
        sequences = sorted((c.sequence for c in rendered.timeline.calls), reverse=True)
        assert order.split(",") == [str(s) for s in sequences]
        assert hidden.split(",") == ["denied"]
        assert aria == "descending"


class TestDetectors:
    def test_console_and_network_detectors_catch_a_broken_page(
        self, chromium: Path, tmp_path: Path
    ) -> None:
        """A page that throws, logs an error and loads an image is caught by both detectors."""
        page = tmp_path / "broken.html"
        page.write_text(
            '<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head>'
            '<body><p>broken</p><img src="http://127.0.0.1:9/pixel.png" alt="">'
            "<script>console.error('deliberate console error');"
            "throw new Error('deliberate uncaught error');</script></body></html>",
            "utf-8",
        )
        run = _run("broken", dump_dom(chromium, page, workdir=tmp_path))
        assert any("deliberate console error" in line for line in run.console), run.stderr
        assert any("Uncaught Error: deliberate uncaught error" in line for line in run.console)
        assert "http://127.0.0.1:9/pixel.png" in run.page_requests()

    def test_csp_blocks_and_reports_injected_content(
        self, chromium: Path, rendered: Rendered
    ) -> None:
        """Markup slipped into the report cannot load or run anything, and it shows up."""
        injected = rendered.html.replace(
            "<body>",
            '<body><img src="http://127.0.0.1:9/leak.png" alt="">'
            "<script>document.title='pwned'</script>"
            '<div style="color:red">styled</div>',
            1,
        )
        page = rendered.workdir / "injected.html"
        page.write_text(injected, "utf-8")
        run = _run("injected", dump_dom(chromium, page, workdir=rendered.workdir))
        assert run.page_requests() == []
        violations = [m for m in run.console if "Content Security Policy" in m]
        assert any("leak.png" in m for m in violations), run.console
        assert any("inline script" in m.lower() for m in violations), run.console
        assert any("style" in m.lower() for m in violations), run.console
        assert "<title>pwned</title>" not in run.stdout


def teardown_module() -> None:
    if _timings:
        print("\nchromium runs: " + ", ".join(f"{k} {v:.2f}s" for k, v in _timings.items()))
