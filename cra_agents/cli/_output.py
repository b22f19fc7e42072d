"""Where the ``cra`` command writes: JSON, or text with colour and tables on a terminal.

Human output goes through :mod:`rich`: colour, tables and progress bars when stdout (stderr for
progress) is a terminal, plain aligned text otherwise (``NO_COLOR`` and ``--no-color`` are
honoured). ``--json`` writes exactly one JSON document to stdout and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

import orjson

from cra_agents._text import visible

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

__all__ = ["STYLE", "CLIError", "Output", "clean", "esc"]


def clean(text: object) -> str:
    r"""``text`` with control and invisible format characters escaped (``\\n``, ``\\u202e``...).

    C0/C1 controls would reach the terminal as escape sequences, and bidirectional overrides
    or zero-width characters would reorder or hide trace content: the rule is
    :func:`cra_agents._text.visible`, shared with the HTML report.
    """
    return visible(str(text))


def esc(text: object) -> str:
    """``text`` cleaned and escaped for rich markup: safe to interpolate into a styled line."""
    from rich.markup import escape

    return escape(clean(text))


#: Rich styles per outcome word, shared by every command.
STYLE = {
    "allow": "green",
    "allowed": "green",
    "approved": "blue",
    "executed": "green",
    "valid": "bold green",
    "pass": "green",
    "ok": "green",
    "info": "cyan",
    "warn": "yellow",
    "warning": "yellow",
    "partial": "yellow",
    "requires_approval": "yellow",
    "require_approval": "yellow",
    "pending": "yellow",
    "deny": "red",
    "denied": "red",
    "failed": "red",
    "fail": "bold red",
    "error": "bold red",
    "invalid": "bold red",
}


class CLIError(Exception):
    """An error the user can fix: a stable code, a message and what to do next."""

    def __init__(self, code: str, message: str, hint: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def as_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"code": self.code, "message": self.message, "hint": self.hint}


def _json_default(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    return str(value)


def dumps(data: Any) -> str:
    """Indented JSON with sorted keys (what ``--json`` prints)."""
    return orjson.dumps(
        data, default=_json_default, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    ).decode()


class Output:
    """The command's output channel."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        color: bool | None = None,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        if color is None and os.environ.get("NO_COLOR"):
            color = False
        self._color = color
        self._console: Console | None = None
        self._err_console: Console | None = None

    # -- consoles (rich is imported on first use only) --

    def _make(self, file: IO[str]) -> Console:
        from rich.console import Console

        terminal = _isatty(file)
        width = None if terminal else int(os.environ.get("COLUMNS", "0") or 0) or 160
        return Console(
            file=file,
            force_terminal=terminal if self._color is None else self._color and terminal,
            no_color=self._color is False,
            highlight=False,
            soft_wrap=not terminal,
            width=width,
            emoji=False,
        )

    @property
    def console(self) -> Console:
        """Console on stdout."""
        if self._console is None:
            self._console = self._make(self.stdout)
        return self._console

    @property
    def err(self) -> Console:
        """Console on stderr."""
        if self._err_console is None:
            self._err_console = self._make(self.stderr)
        return self._err_console

    @property
    def terminal(self) -> bool:
        """Whether stdout is a terminal (and styling is on)."""
        return not self.json_mode and self.console.is_terminal

    # -- writing --

    def json(self, data: Any) -> None:
        """Write ``data`` as the command's one JSON document."""
        self.stdout.write(dumps(data) + "\n")
        self.stdout.flush()

    def print(self, *items: RenderableType, style: str | None = None) -> None:
        """Print human output (ignored in JSON mode)."""
        if self.json_mode:
            return
        if self.console.is_terminal:
            self.console.print(*items, style=style)
            return
        with self.console.capture() as captured:  # plain text: no padding at line ends
            self.console.print(*items, style=style)
        text = "\n".join(line.rstrip() for line in captured.get().splitlines())
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def line(self, text: str = "") -> None:
        """Print one line of plain text (no markup interpretation)."""
        if not self.json_mode:
            self.console.print(clean(text), markup=False)

    def styled(self, word: str, text: str | None = None) -> str:
        """``text`` (default ``word``) marked up with the style of ``word``."""
        from rich.markup import escape

        shown = escape(clean(text if text is not None else word))
        style = STYLE.get(word.lower())
        return f"[{style}]{shown}[/]" if style else shown

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        title: str | None = None,
        markup: bool = False,
    ) -> Table:
        """A table: boxed on a terminal, aligned plain columns otherwise."""
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        table = Table(
            title=title,
            box=box.SIMPLE_HEAD if self.terminal else None,
            show_edge=False,
            header_style="bold" if self.terminal else "",
            title_justify="left",
            pad_edge=False,
        )
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(
                *(
                    ("" if cell is None else str(cell))
                    if markup
                    else escape(clean("" if cell is None else cell))
                    for cell in row
                )
            )
        return table

    def error(self, error: CLIError) -> None:
        """Report a user error: JSON on stdout in JSON mode, text on stderr otherwise."""
        if self.json_mode:
            self.json({"error": error.as_dict()})
            return
        from rich.markup import escape

        self.err.print(
            f"[bold red]error[/] [dim]\\[{error.code}][/]: {escape(clean(error.message))}"
        )
        if error.hint:
            self.err.print(f"  [cyan]hint[/]: {escape(clean(error.hint))}")

    def warn(self, message: str) -> None:
        """A warning on stderr (also in JSON mode: stdout stays one document)."""
        from rich.markup import escape

        self.err.print(f"[yellow]warning[/]: {escape(clean(message))}")

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr for long work; a no-op off a terminal or in JSON mode.

        Yields:
            ``advance(n)``, to call as work completes.
        """
        if self.json_mode or not _isatty(self.stderr) or self._color is False:
            yield _ignore
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


def _ignore(_: int) -> None:
    return None


def _isatty(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False
