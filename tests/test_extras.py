"""The lean core: what each extra adds, and what happens when it is not installed.

A missing extra is simulated by blocking its top-level module (``sys.modules[name] = None``
makes ``import name`` raise ``ModuleNotFoundError``), in this process with ``monkeypatch`` or
in a fresh interpreter.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import cra_agents as cra
import cra_agents.otel
from cra_agents.cli import main
from cra_agents.cli._output import Output
from cra_agents.trace import (
    Checkpoint,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
    verify_chain,
)

#: Distributions the core install must not pull in.
NOT_IN_CORE = (
    "cryptography",
    "rich",
    "opentelemetry-",
    "grpcio",
    "ipywidgets",
    "ipython",
    "psycopg",
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _requirements() -> list[Requirement]:
    return [Requirement(line) for line in importlib.metadata.requires("cra-agents") or []]


def _run_blocked(blocked: tuple[str, ...], body: str, *, cwd: Path | None = None) -> Any:
    """Run ``body`` in a fresh interpreter with ``blocked`` modules unimportable."""
    code = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n" + body
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def _session(tmp_path: Path, github_ops: Path) -> tuple[str, str]:
    """A stored session with one allowed call: (store URL, session id)."""
    url = f"sqlite://{tmp_path}/traces.db"
    runtime = cra.Runtime(atlases=[github_ops], store=url)
    session = runtime.create_session("triage-bot", "triage issues")
    runtime.record_outcome(
        runtime.authorize(session.session_id, "github.issue.list", {"repo": "acme/app"}), result=1
    )
    runtime.end_session(session.session_id)
    runtime.close()
    return url, session.session_id


class TestDistribution:
    def test_core_requirements_leave_out_every_extra(self):
        """The core's requirements name no signing, OTel, gRPC, rich or notebook package."""
        core = [r.name.lower() for r in _requirements() if r.marker is None]
        assert core, "cra-agents declares no requirements"
        assert [name for name in core if name.startswith(NOT_IN_CORE)] == []

    @pytest.mark.parametrize(
        ("extra", "package"),
        [
            ("signing", "cryptography"),
            ("cli", "rich"),
            ("otel", "opentelemetry-api"),
            ("otel", "opentelemetry-exporter-otlp-proto-http"),
            ("otel-grpc", "opentelemetry-api"),
            ("otel-grpc", "opentelemetry-exporter-otlp-proto-grpc"),
            ("server", "zstandard"),
            ("sink", "zstandard"),
            ("postgres", "psycopg"),
        ],
    )
    def test_each_extra_installs_its_package(self, extra, package):
        """The extra a MissingDependencyError names is the one that installs the package."""
        names = {
            r.name.lower()
            for r in _requirements()
            if r.marker is not None and r.marker.evaluate({"extra": extra})
        }
        assert package in names

    def test_all_installs_every_extra(self):
        """``cra-agents[all]`` requires exactly what the other extras require together."""

        def wanted(*extras: str) -> set[str]:
            return {
                str(r).split(";")[0]
                for r in _requirements()
                for extra in extras
                if r.marker is not None and r.marker.evaluate({"extra": extra})
            }

        others = (
            "yaml",
            "signing",
            "otel",
            "otel-grpc",
            "cli",
            "notebook",
            "server",
            "sink",
            "postgres",
        )
        assert wanted("all") == wanted(*others)
        assert {"cryptography>=43", "rich>=13.7"} <= wanted("all")


class TestSigningExtra:
    @pytest.fixture
    def no_cryptography(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "cryptography", None)

    @pytest.mark.usefixtures("no_cryptography")
    def test_keys_need_the_signing_extra(self, tmp_path):
        """Making or reading a key raises MissingDependencyError naming ``signing``."""
        for attempt in (
            generate_signing_key,
            lambda: load_signing_key(tmp_path / "k.key"),
            lambda: load_verify_key(tmp_path / "k.pub"),
        ):
            with pytest.raises(cra.MissingDependencyError) as caught:
                attempt()
            assert caught.value.package == "cryptography"
            assert caught.value.extra == "signing"
            assert "pip install 'cra-agents[signing]'" in str(caught.value)
            assert isinstance(caught.value, ImportError)

    @pytest.mark.usefixtures("no_cryptography")
    def test_chains_without_checkpoints_verify_without_it(self, github_ops):
        """Verifying a chain, and reading checkpoint files, need no cryptography."""
        runtime = cra.Runtime(atlases=[github_ops])
        session = runtime.create_session("bot", "goal")
        assert runtime.verify(session.session_id).valid
        assert verify_chain(runtime.trace_events(session.session_id)).valid
        data = {
            "log_id": session.session_id,
            "size": 1,
            "head_hash": "0" * 64,
            "timestamp": "2026-01-01T00:00:00Z",
            "key_id": "0" * 16,
            "signature": "",
        }
        assert Checkpoint.from_dict(data).size == 1

    @pytest.mark.usefixtures("no_cryptography")
    def test_checkpoints_without_it_need_the_extra(self, github_ops):
        """A checkpoint's signature cannot be checked without cryptography."""
        runtime = cra.Runtime(atlases=[github_ops])
        session = runtime.create_session("bot", "goal")
        anchor = Checkpoint(session.session_id, 1, "0" * 64, "2026-01-01T00:00:00Z", "0" * 16, "")
        with pytest.raises(cra.MissingDependencyError, match="signing"):
            anchor.verify_signature(object())  # type: ignore[arg-type]

    @pytest.mark.usefixtures("no_cryptography")
    @pytest.mark.parametrize("command", ["keygen", "verify", "checkpoint", "report"])
    def test_cli_says_which_extra_to_install(self, capsys, tmp_path, github_ops, command):
        """``cra trace keygen / checkpoint / verify --pubkey / report --pubkey`` exit 2 with
        the usual error line and the install command as the hint."""
        url, sid = _session(tmp_path, github_ops)
        for name in ("k.key", "k.pub", "c.jsonl"):
            (tmp_path / name).write_text("")
        argv = {
            "keygen": ["trace", "keygen", str(tmp_path / "new")],
            "verify": [
                "trace", "verify", sid, "--store", url,
                "--checkpoint", str(tmp_path / "c.jsonl"), "--pubkey", str(tmp_path / "k.pub"),
            ],
            "checkpoint": [
                "trace", "checkpoint", sid, "--store", url, "--key", str(tmp_path / "k.key"),
            ],
            "report": [
                "trace", "report", sid, "--store", url, "-o", str(tmp_path / "r.html"),
                "--checkpoint", str(tmp_path / "c.jsonl"), "--pubkey", str(tmp_path / "k.pub"),
            ],
        }[command]  # fmt: skip
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2
        assert "error [MISSING_DEPENDENCY]: signing or checking trace checkpoints needs " in err
        assert "hint: install the 'signing' extra: pip install 'cra-agents[signing]'" in err
        assert not (tmp_path / "new.key").exists()

    @pytest.mark.usefixtures("no_cryptography")
    def test_cli_json_error_names_the_extra(self, capsys, tmp_path):
        """With --json the error is one document carrying the code and the hint."""
        assert main(["trace", "keygen", str(tmp_path / "k"), "--json"]) == 2
        error = json.loads(capsys.readouterr().out)["error"]
        assert error["code"] == "MISSING_DEPENDENCY"
        assert "cra-agents[signing]" in error["hint"]


class TestOtelExtra:
    @pytest.fixture
    def no_opentelemetry(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "opentelemetry", None)
        for name in ("cra_agents.otel._config", "cra_agents.otel._observer"):
            monkeypatch.delitem(sys.modules, name, raising=False)

    @pytest.mark.usefixtures("no_opentelemetry")
    @pytest.mark.parametrize(
        ("spec", "extra"),
        [
            ("http://127.0.0.1:4318", "otel"),
            ("grpc://127.0.0.1:4317", "otel-grpc"),
            ("GRPCS://collector:4317", "otel-grpc"),
            (True, "otel"),
        ],
    )
    def test_otel_without_opentelemetry_names_the_extra(self, github_ops, spec, extra):
        """``otel=`` without OpenTelemetry raises MissingDependencyError naming the extra."""
        with pytest.raises(cra.MissingDependencyError) as caught:
            cra.Runtime(atlases=[github_ops], otel=spec)
        assert caught.value.extra == extra
        assert caught.value.package == "opentelemetry-api"
        assert f"pip install 'cra-agents[{extra}]'" in str(caught.value)

    @pytest.mark.usefixtures("no_opentelemetry")
    def test_otel_off_needs_nothing(self, github_ops):
        """``otel=None`` and ``otel=False`` load no OpenTelemetry."""
        for spec in (None, False):
            assert cra_agents.otel.observer_from(spec) is None
            cra.Runtime(atlases=[github_ops], otel=spec).close()

    @pytest.mark.usefixtures("no_opentelemetry")
    @pytest.mark.parametrize("name", ["OTelConfig", "telemetry_from", "Telemetry"])
    def test_span_names_need_the_extra(self, name):
        """The names that need the OTel API raise MissingDependencyError on first use."""
        with pytest.raises(cra.MissingDependencyError, match=r"cra-agents\[otel\]"):
            cra_agents.otel.__getattr__(name)

    def test_other_missing_modules_are_not_an_extra(self, monkeypatch):
        """A module other than OpenTelemetry missing is re-raised as it is (a bug)."""
        monkeypatch.setitem(sys.modules, "cra_agents.otel._config", None)
        with pytest.raises(ModuleNotFoundError) as caught:
            cra_agents.otel.__getattr__("OTelConfig")
        assert not isinstance(caught.value, cra.MissingDependencyError)

    def test_otlp_json_export_and_check_need_no_opentelemetry(self, tmp_path, github_ops):
        """``cra trace export --format otlp`` and ``verify --from-otlp`` only read and write
        JSON: they work with OpenTelemetry absent, and never load it."""
        url, sid = _session(tmp_path, github_ops)
        body = textwrap.dedent(
            f"""
            from cra_agents.cli import main
            spans = {str(tmp_path / "spans.json")!r}
            assert main(["trace", "export", {sid!r}, "--store", {url!r}, "--format", "otlp",
                         "-o", spans]) == 0
            assert main(["trace", "verify", {sid!r}, "--store", {url!r},
                         "--from-otlp", spans]) == 0
            print(sorted(m for m in sys.modules if m.startswith("opentelemetry")
                         and sys.modules[m] is not None))
            """
        )
        done = _run_blocked(("opentelemetry",), body)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "[]"
        assert json.loads((tmp_path / "spans.json").read_text())["resourceSpans"]


class TestWithoutRich:
    """``cra`` without the ``cli`` extra: plain text everywhere, the same information."""

    COMMANDS = (
        ("--help",),
        ("atlas", "validate", "{atlas}"),
        ("atlas", "show", "{atlas}"),
        ("resolve", "--atlas", "{atlas}", "--goal", "list open issues"),
        ("trace", "list", "--store", "{store}"),
        ("trace", "show", "{sid}", "--store", "{store}"),
        ("trace", "verify", "{sid}", "--store", "{store}"),
    )

    def _argvs(self, tmp_path: Path, github_ops: Path) -> list[list[str]]:
        url, sid = _session(tmp_path, github_ops)
        values = {"atlas": str(github_ops), "store": url, "sid": sid}
        return [[part.format(**values) for part in command] for command in self.COMMANDS]

    def test_every_command_runs_without_rich(self, tmp_path, github_ops):
        """Each command succeeds with rich blocked, prints what it prints with rich (off a
        terminal), and never imports rich."""
        argvs = self._argvs(tmp_path, github_ops)
        body = textwrap.dedent(
            f"""
            import contextlib, io, json
            from cra_agents.cli import main
            results = []
            for argv in {argvs!r}:
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = main(argv)
                results.append([code, out.getvalue(), err.getvalue()])
            results.append(sorted(m for m in sys.modules if m.split(".")[0] == "rich"
                                  and sys.modules[m] is not None))
            print(json.dumps(results))
            """
        )
        blocked = _run_blocked(("rich",), body)
        assert blocked.returncode == 0, blocked.stderr
        *without, loaded = json.loads(blocked.stdout)
        assert loaded == []
        with_rich = _run_blocked((), body)
        *expected, _ = json.loads(with_rich.stdout)
        uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}")  # resolve makes a new resolution id
        assert uuid.sub("ID", json.dumps(without)) == uuid.sub("ID", json.dumps(expected))
        for (code, out, err), argv in zip(without, argvs, strict=True):
            assert code == 0, (argv, err)
            assert out.strip(), argv
            assert "\x1b[" not in out
        help_text, validate, show, resolve, listed, tree, verified = (r[1] for r in without)
        assert "exit codes" in help_text
        assert "VALID" in validate
        assert "github.issue.list" in show
        assert "REQUIRES_APPROVAL" in resolve
        assert "triage-bot" in listed
        assert "└── " in tree or "├── " in tree
        assert "github.issue.list" in tree
        assert "VALID" in verified

    def test_a_terminal_gets_plain_text_without_rich(self, monkeypatch):
        """On a terminal with rich absent: no escape codes, aligned tables, trees, no bar."""
        monkeypatch.setitem(sys.modules, "rich", None)

        class TTY(io.StringIO):
            def isatty(self) -> bool:
                return True

        stdout, stderr = TTY(), TTY()
        out = Output(stdout=stdout, stderr=stderr)
        assert not out.terminal
        tree = out_tree(out)
        out.print(out.styled("denied", "DENIED"), out.table(["a", "bb"], [["xxx", "[y]"]]), tree)
        out.line("done [bold]")
        out.warn("careful")
        with out.progress("work", 2) as advance:
            advance(2)
        assert stdout.getvalue() == (
            "DENIED a    bb\nxxx  [y] root\n├── one\n│   └── two\n└── three\ndone [bold]\n"
        )
        assert stderr.getvalue() == "warning: careful\n"

    def test_rich_on_a_terminal_shows_the_same_information(self):
        """With rich on a terminal the table and tree hold the same text as plain output."""

        class TTY(io.StringIO):
            def isatty(self) -> bool:
                return True

        fancy, piped = TTY(), io.StringIO()
        for stream in (fancy, piped):
            out = Output(stdout=stream)
            out.print(out.table(["name", "state"], [["deploy", "[ok]"]], title="jobs"))
            out.print(out_tree(out))
        assert fancy.getvalue() != piped.getvalue()
        assert "\x1b[" in fancy.getvalue()

        def words(text: str) -> list[str]:
            return re.findall(r"[\w\[\]]+", ANSI.sub("", text))

        assert words(fancy.getvalue()) == words(piped.getvalue())

    def test_ascii_streams_get_ascii_guides(self):
        """A stream that cannot encode box drawing gets ASCII tree guides."""
        stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        out = Output(stdout=stream)
        out.print(out_tree(out))
        stream.seek(0)
        assert stream.read() == "root\n+-- one\n|   `-- two\n`-- three\n"


def out_tree(out: Output) -> Any:
    """A small tree: root, one (with two), three."""
    from cra_agents.cli._output import Tree

    tree = Tree("[bold]root[/]")
    tree.add("one").add(out.styled("allowed", "two"))
    tree.add("three")
    return tree


class TestStartUp:
    #: Modules ``cra --help`` must not load (what makes the core heavy, or needs an extra).
    NOT_FOR_HELP = ("rich", "cryptography", "opentelemetry", "pydantic", "jsonschema", "httpx")
    #: Modules ``cra atlas validate`` must not load.
    NOT_FOR_VALIDATE = ("rich", "cryptography", "opentelemetry", "jsonschema", "httpx", "re2")

    def _loaded(self, body: str, heavy: tuple[str, ...]) -> list[str]:
        code = (
            "import sys, contextlib, io\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n{textwrap.indent(body, '    ')}\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"')))

    def test_importing_the_cli_loads_nothing_heavy(self):
        """``import cra_agents; import cra_agents.cli`` loads none of the optional parts."""
        assert self._loaded("import cra_agents\nimport cra_agents.cli", self.NOT_FOR_HELP) == []

    def test_help_loads_nothing_heavy(self):
        """``cra --help`` builds the parser without the command modules' dependencies."""
        body = "from cra_agents.cli import main\nassert main(['--help']) == 0"
        assert self._loaded(body, self.NOT_FOR_HELP) == []

    def test_atlas_validate_loads_only_what_it_needs(self, github_ops):
        """``cra atlas validate`` (lenient) needs pydantic, not the schema validator or rich."""
        body = (
            "from cra_agents.cli import main\n"
            f"assert main(['atlas', 'validate', {str(github_ops)!r}]) == 0"
        )
        assert self._loaded(body, self.NOT_FOR_VALIDATE) == []


class TestMarkup:
    """Plain output renders markup exactly as rich does, without importing it."""

    TEXTS = ("a[b]c", "tail\\", "tail\\\\", "a\\[b]", "p\\\\[red]q", "[dim]", "[/]", "x[y")

    @pytest.mark.parametrize("text", TEXTS)
    def test_escape_and_plain_match_rich(self, text):
        """``esc`` is rich's escape; ``plain`` gives the text rich renders, tags or not."""
        from rich.markup import escape, render

        from cra_agents.cli._output import esc, plain

        assert esc(text) == escape(text)
        for markup in (esc(text), f"[bold]{esc(text)}[/] and [red]{esc(text)}[/red]"):
            assert plain(markup) == render(markup, emoji=False).plain
        if text not in ("[/]", "p\\\\[red]q"):  # unbalanced raw markup: rich refuses it
            assert plain(text) == render(text, emoji=False).plain

    def test_terminal_lines_and_errors_go_through_rich(self):
        """On a terminal with rich: plain lines stay unstyled, errors are coloured."""
        from cra_agents.cli._output import CLIError

        class TTY(io.StringIO):
            def isatty(self) -> bool:
                return True

        stdout, stderr = TTY(), TTY()
        out = Output(stdout=stdout, stderr=stderr)
        out.line("[bold]kept[/]")
        out.error(CLIError("usage", "bad", "do this"))
        assert stdout.getvalue() == "[bold]kept[/]\n"
        assert "\x1b[" in stderr.getvalue()
        assert "bad" in stderr.getvalue()
        assert "do this" in stderr.getvalue()

    def test_json_mode_prints_no_text(self):
        """In JSON mode text output is dropped: stdout stays one document."""
        stream = io.StringIO()
        out = Output(json_mode=True, stdout=stream)
        out.line("x")
        out.print("y")
        out.json({"ok": True})
        assert json.loads(stream.getvalue()) == {"ok": True}

    def test_a_stream_without_isatty_is_not_a_terminal(self):
        """A closed or file-like stream without ``isatty`` gets plain text."""

        class Sink:
            def __init__(self) -> None:
                self.parts: list[str] = []

            def write(self, text: str) -> int:
                self.parts.append(text)
                return len(text)

            def flush(self) -> None:
                return None

        sink = Sink()
        out = Output(stdout=sink)  # type: ignore[arg-type]
        out.print("[green]ok[/]")
        assert "".join(sink.parts) == "ok\n"


def test_subpackages_stay_reachable_from_the_package():
    """``cra_agents.trace`` and the others ``import cra_agents`` used to load still resolve."""
    assert cra.__getattr__("trace") is importlib.import_module("cra_agents.trace")
    with pytest.raises(AttributeError, match="no_such"):
        cra.__getattr__("no_such")
