"""The code blocks of a Markdown file, and how to run them as a reader would.

Every fenced block whose language is ``python`` or ``bash`` is a snippet a reader may copy:

- a ``python`` block is a whole script, run in a fresh interpreter; a block whose info string
  is ``python continued`` goes on from the previous ``python`` block of the file (the two run
  as one script), for prose that continues an example;
- a ``bash`` block is run line by line (``\\`` continues a line; comment lines are skipped); a
  line whose trailing comment says ``exit N`` is expected to exit with status N, every other
  line with 0;
- a block right after the comment ``<!-- snippet: skip REASON -->`` is not run (setup commands
  that need a clone of the repository); the reason is required.

All blocks of one file run in order in one working directory, so later blocks see the files
earlier ones wrote (the trace store of the quickstart, an atlas copied by ``cra atlas init``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.harness.processes import run_bounded

__all__ = ["Snippet", "parse_snippets", "run_snippet"]

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")
_SKIP = re.compile(r"^<!--\s*snippet:\s*skip\s+(?P<reason>.+?)\s*-->$")
_EXPECTED_EXIT = re.compile(r"#.*\bexit (\d+)\b")
RUNNABLE = {"python", "bash"}


@dataclass(frozen=True)
class Snippet:
    """One fenced code block."""

    file: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    continued: bool = False
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file.name}:{self.line}"


def parse_snippets(path: Path) -> list[Snippet]:
    """Every fenced block of ``path``, in order (all languages; see :data:`RUNNABLE`)."""
    lines = path.read_text("utf-8").splitlines()
    found: list[Snippet] = []
    index = 0
    last_text = ""
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            if lines[index].strip():
                last_text = lines[index].strip()
            index += 1
            continue
        indent = len(match["indent"])
        words = match["info"].split()
        start = index + 1
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index])
            index += 1
        index += 1
        skip = _SKIP.match(last_text)
        found.append(
            Snippet(
                file=path,
                line=start,
                language=words[0] if words else "",
                code="\n".join(body) + "\n",
                continued="continued" in words[1:],
                skip=skip["reason"] if skip else None,
            )
        )
        last_text = ""
    return found


def _bash_lines(code: str) -> list[str]:
    commands: list[str] = []
    pending = ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    if pending:
        commands.append(pending)
    return commands


def run_snippet(
    snippet: Snippet,
    *,
    python: Path,
    cwd: Path,
    env: dict[str, str],
    previous_python: str = "",
    timeout: float = 240.0,
) -> list[str]:
    """Run one snippet; return the failures (empty when it behaved as the file says)."""
    failures: list[str] = []
    if snippet.language == "python":
        code = (previous_python if snippet.continued else "") + snippet.code
        script = cwd / f"snippet_{snippet.file.stem}_{snippet.line}.py"
        script.write_text(code, "utf-8")
        done = run_bounded([str(python), str(script)], cwd=cwd, env=env, timeout=timeout)
        if done.returncode != 0:
            failures.append(
                f"{snippet.where}: python exited {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return failures
    for command in _bash_lines(snippet.code):
        expected = _EXPECTED_EXIT.search(command)
        want = int(expected.group(1)) if expected else 0
        done = run_bounded(["bash", "-c", command], cwd=cwd, env=env, timeout=timeout)
        if done.returncode != want:
            failures.append(
                f"{snippet.where}: `{command}` exited {done.returncode}, expected {want}\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
    return failures
