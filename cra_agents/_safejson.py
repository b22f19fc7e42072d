"""Bounded, strict JSON parsing for untrusted documents (atlases, requests, traces).

Refuses what ``json.loads`` silently accepts: duplicate keys (last-wins would let a later key
override a deny), ``NaN``/``Infinity``, integers outside the 64-bit range, byte-order marks and
non-UTF-8 input. Size is capped before parsing and nesting depth right after, and a
``RecursionError`` from a pathological document becomes a clean error.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

__all__ = ["DEFAULT_MAX_DEPTH", "JSONInputError", "loads_strict"]

DEFAULT_MAX_DEPTH = 64
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class JSONInputError(ValueError):
    """A document was refused. ``reason`` is a slug, ``path`` a JSON pointer where known."""

    def __init__(self, message: str, *, reason: str, path: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return result


def _constant(name: str) -> NoReturn:
    raise JSONInputError(f"{name} is not a JSON number", reason="non_finite_number")


def _int(text: str) -> int:
    if len(text) > 21:
        raise JSONInputError(f"integer {text[:24]}... is out of range", reason="integer_range")
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise JSONInputError(f"integer {text} is out of the 64-bit range", reason="integer_range")
    return value


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONInputError(f"number {text} overflows a 64-bit float", reason="non_finite_number")
    return value


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _deep_path(value: Any, max_depth: int) -> str:
    """The JSON pointer of the first container nested deeper than ``max_depth``."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            children = [(v, f"{path}/{_escape(k)}") for k, v in node.items()]
        elif isinstance(node, list):
            children = [(v, f"{path}/{i}") for i, v in enumerate(node)]
        else:
            continue
        if depth > max_depth:
            return path
        stack.extend((child, depth + 1, child_path) for child, child_path in children)
    return ""  # pragma: no cover - only called for a document that is too deep


def _check_depth(value: Any, max_depth: int) -> None:
    # Paths are only built for the error (the common case, a shallow document, pays nothing
    # for them); the walk visits containers in the same order as _deep_path.
    stack: list[tuple[Any, int]] = [(value, 1)]
    container = (dict, list)
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise JSONInputError(
                f"document nests deeper than {max_depth} levels",
                reason="too_deep",
                path=_deep_path(value, max_depth),
            )
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, container))


def loads_strict(data: bytes | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse one JSON document under the rules above.

    Raises:
        JSONInputError: the document was refused; nothing of it is returned.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        raise JSONInputError(
            f"document is {len(data)} bytes, over the {max_bytes}-byte limit", reason="too_large"
        )
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise JSONInputError(
            "document starts with a byte-order mark; save it as UTF-8 without BOM",
            reason="invalid_encoding",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONInputError(
            f"document is not valid UTF-8 (byte {exc.start})", reason="invalid_encoding"
        ) from exc
    if not text.strip():
        raise JSONInputError("document is empty", reason="empty")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except _DuplicateKeyError as exc:
        raise JSONInputError(
            f"duplicate key {exc.key!r}; every key may appear once per object",
            reason="duplicate_key",
        ) from exc
    except RecursionError as exc:
        raise JSONInputError("document nests too deeply to parse", reason="too_deep") from exc
    except json.JSONDecodeError as exc:
        raise JSONInputError(
            f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            reason="invalid_json",
        ) from exc
    if isinstance(value, dict | list):
        _check_depth(value, max_depth)
    return value
