"""Where the ``cra`` command writes: JSON, or text with colour and tables on a terminal.

On a terminal, with :mod:`rich` installed (the ``cli`` extra), human output has colour, boxed
tables, trees and progress bars (``NO_COLOR`` and ``--no-color`` turn colour off). Otherwise —
output piped or redirected, or rich not installed — it is plain aligned text with the same
content, written without importing rich. ``--json`` writes exactly one JSON document to stdout
and nothing else.

Commands write rich *markup* (``"[bold]x[/]"``, with :func:`esc` around untrusted text) and
build :class:`Table` and :class:`Tree` values; :class:`Output` renders them either way.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from cra_agents._text import visible

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["STYLE", "CLIError", "Output", "Table", "Tree", "clean", "esc", "plain"]

# The markup grammar of rich (rich.markup.RE_TAGS and escape), so that text is escaped and
# rendered identically with and without rich installed.
_TAGS = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")
_ESCAPE = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def clean(text: object) -> str:
    r"""``text`` with control and invisible format characters escaped (``\\n``, ``\\u202e``...).

    C0/C1 controls would reach the terminal as escape sequences, and bidirectional overrides
    or zero-width characters would reorder or hide trace content: the rule is
    :func:`cra_agents._text.visible`, shared with the HTML report.
    """
    return visible(str(text))


def esc(text: object) -> str:
    """``text`` cleaned and escaped for rich markup: safe to interpolate into a styled line."""
    escaped = _ESCAPE.sub(lambda m: f"{m[1]}{m[1]}\\{m[2]}", clean(text))
    if escaped.endswith("\\") and not escaped.endswith("\\\\"):
        return escaped + "\\"
    return escaped


def plain(markup: str) -> str:
    """The text of rich markup ``markup``: tags dropped, escaped brackets restored."""
    parts: list[str] = []
    position = 0
    for match in _TAGS.finditer(markup):
        full, escapes, _ = match.groups()
        start, end = match.span()
        if start > position:
            parts.append(markup[position:start].replace("\\[", "["))
        position = end
        if escapes:
            backslashes, escaped = divmod(len(escapes), 2)
            parts.append("\\" * backslashes)
            if escaped:
                parts.append(full[len(escapes) :])
    parts.append(markup[position:].replace("\\[", "["))
    return "".join(parts)


@dataclass
class Table:
    """Rows under column headings; every cell is markup (see :meth:`Output.table`)."""

    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str | None = None


@dataclass
class Tree:
    """A label (markup) with child trees, drawn with guide lines."""

    label: str
    children: list[Tree] = field(default_factory=list)

    def add(self, label: str) -> Tree:
        """Add a child labelled ``label`` and return it."""
        child = Tree(label)
        self.children.append(child)
        return child


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
    import orjson  # not at the top: ``cra --help`` and text output do without it

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

    # -- consoles (rich is imported on first use on a terminal only) --

    def _make(self, file: IO[str]) -> Console:
        from rich.console import Console

        return Console(
            file=file,
            force_terminal=self._color is not False,
            no_color=self._color is False,
            highlight=False,
            emoji=False,
        )

    @property
    def console(self) -> Console:
        """Rich console on stdout (only used when :attr:`terminal`)."""
        if self._console is None:
            self._console = self._make(self.stdout)
        return self._console

    @property
    def err(self) -> Console:
        """Rich console on stderr (only used when stderr is a terminal and rich installed)."""
        if self._err_console is None:
            self._err_console = self._make(self.stderr)
        return self._err_console

    @property
    def terminal(self) -> bool:
        """Whether human output on stdout is drawn by rich (a terminal, and rich installed)."""
        return not self.json_mode and _fancy(self.stdout)

    # -- writing --

    def json(self, data: Any) -> None:
        """Write ``data`` as the command's one JSON document."""
        self.stdout.write(dumps(data) + "\n")
        self.stdout.flush()

    def print(self, *items: str | Table | Tree, style: str | None = None) -> None:
        """Print markup strings, tables and trees, separated by spaces (ignored in JSON mode)."""
        if self.json_mode:
            return
        if self.terminal:
            self.console.print(*(_rich(item) for item in items), style=style)
            return
        ascii_only = not _unicode(self.stdout)
        _write(self.stdout, " ".join(_plain_lines(item, ascii_only) for item in items))

    def line(self, text: str = "") -> None:
        """Print one line of plain text (no markup interpretation)."""
        if self.json_mode:
            return
        if self.terminal:
            self.console.print(clean(text), markup=False)
        else:
            _write(self.stdout, clean(text))

    def styled(self, word: str, text: str | None = None) -> str:
        """``text`` (default ``word``) marked up with the style of ``word``."""
        shown = esc(text if text is not None else word)
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
        """A table: boxed on a terminal, aligned plain columns otherwise.

        Cells are escaped text unless ``markup`` is true (then they are markup already).
        """
        table = Table(columns, title=title)
        for row in rows:
            table.rows.append(
                [
                    ("" if cell is None else str(cell))
                    if markup
                    else esc("" if cell is None else cell)
                    for cell in row
                ]
            )
        return table

    def _err_line(self, markup: str) -> None:
        if _fancy(self.stderr):
            self.err.print(markup)
        else:
            _write(self.stderr, plain(markup))

    def error(self, error: CLIError) -> None:
        """Report a user error: JSON on stdout in JSON mode, text on stderr otherwise."""
        if self.json_mode:
            self.json({"error": error.as_dict()})
            return
        self._err_line(f"[bold red]error[/] [dim]\\[{error.code}][/]: {esc(error.message)}")
        if error.hint:
            self._err_line(f"  [cyan]hint[/]: {esc(error.hint)}")

    def warn(self, message: str) -> None:
        """A warning on stderr (also in JSON mode: stdout stays one document)."""
        self._err_line(f"[yellow]warning[/]: {esc(message)}")

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr; a no-op off a terminal, in JSON mode or without rich.

        Yields:
            ``advance(n)``, to call as work completes.
        """
        if self.json_mode or self._color is False or not _fancy(self.stderr):
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


def _rich_installed() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _fancy(file: IO[str]) -> bool:
    """Whether ``file`` gets rich output: it is a terminal and rich is installed."""
    return _isatty(file) and _rich_installed()


def _write(file: IO[str], text: str) -> None:
    file.write(text + "\n")
    file.flush()


def _unicode(file: IO[str]) -> bool:
    encoding = getattr(file, "encoding", None) or "utf-8"
    return encoding.lower().replace("-", "").startswith("utf")


# -- rich rendering (a terminal with rich installed) ----------------------------------------------


def _rich(item: str | Table | Tree) -> RenderableType:
    if isinstance(item, str):
        return item
    if isinstance(item, Tree):
        from rich.tree import Tree as RichTree

        def grow(node: RichTree, children: list[Tree]) -> None:
            for child in children:
                grow(node.add(child.label), child.children)

        root = RichTree(item.label)
        grow(root, item.children)
        return root
    from rich import box
    from rich.table import Table as RichTable

    table = RichTable(
        title=item.title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        header_style="bold",
        title_justify="left",
        pad_edge=False,
    )
    for column in item.columns:
        table.add_column(column, overflow="fold")
    for row in item.rows:
        table.add_row(*row)
    return table


# -- plain rendering (piped output, or rich not installed) ----------------------------------------


def _cells(text: str) -> int:
    """Terminal columns ``text`` takes (East Asian wide and full-width characters take two)."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _plain_lines(item: str | Table | Tree, ascii_only: bool) -> str:
    if isinstance(item, str):
        return plain(item)
    lines = _plain_tree(item, ascii_only) if isinstance(item, Tree) else _plain_table(item)
    return "\n".join(line.rstrip() for line in lines)


def _plain_table(table: Table) -> list[str]:
    """Columns two spaces apart, the header first, every cell on one line."""
    rows = [list(table.columns), *([plain(cell) for cell in row] for row in table.rows)]
    widths = [max(_cells(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    lines = [] if table.title is None else [plain(table.title)]
    for row in rows:
        lines.append(
            "  ".join(cell + " " * (widths[i] - _cells(cell)) for i, cell in enumerate(row))
        )
    return lines


def _plain_tree(tree: Tree, ascii_only: bool) -> list[str]:
    """The tree with guide lines, as rich draws it."""
    last, branch, pipe = ("`-- ", "+-- ", "|   ") if ascii_only else ("└── ", "├── ", "│   ")
    lines = plain(tree.label).splitlines() or [""]

    def walk(children: list[Tree], prefix: str) -> None:
        for index, child in enumerate(children):
            final = index == len(children) - 1
            label = plain(child.label).splitlines() or [""]
            lines.append(prefix + (last if final else branch) + label[0])
            more = prefix + ("    " if final else pipe)
            lines.extend(more + text for text in label[1:])
            walk(child.children, more)

    walk(tree.children, "")
    return lines
