r"""Showing untrusted text: characters that move, hide or reorder what a reader sees, escaped.

A trace holds strings a model or a tool chose. On a terminal, C0/C1 controls are escape
sequences (cursor moves, OSC 52 clipboard writes); anywhere, Unicode format characters
(category Cf: bidirectional overrides and isolates, zero-width spaces and joiners, the BOM,
tag characters) reorder or hide text, so ``rm -rf /<U+202E>txt.exe`` reads as something else.
:func:`visible` is the one rule: every character of categories Cc, Cf, Cs, Zl and Zp is
written as a Python-style escape (``\x1b``, ``\u202e``, ``\U000e0041``; ``\n``, ``\r`` and
``\t`` by name). Everything else, other scripts and spaces included, is kept as is.

Used by the ``cra`` command (:func:`cra_agents.cli._output.clean`) and by the HTML report.
"""

from __future__ import annotations

import unicodedata

__all__ = ["HIDDEN_CATEGORIES", "visible"]

#: Unicode general categories shown escaped: controls, format characters, lone surrogates,
#: line and paragraph separators.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str, *, keep: str = "") -> str:
    r"""``text`` with every hidden character escaped (see the module docstring).

    Args:
        text: Untrusted text.
        keep: Hidden characters to leave as they are (the HTML report keeps ``"\n\t"``,
            which a page lays out harmlessly).

    Example:
        >>> visible("a\u202eb\x1b[2J\n")
        'a\\u202eb\\x1b[2J\\n'
    """
    # Printable text (the usual case) has no character of a hidden category: one C-level scan.
    if text.isprintable():
        return text
    category = unicodedata.category
    return "".join(
        _escape(c) if category(c) in HIDDEN_CATEGORIES and c not in keep else c for c in text
    )
