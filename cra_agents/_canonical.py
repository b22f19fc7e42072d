r"""Canonical JSON and digests, byte-identical to the upstream Rust core.

The TRACE hash rule (PROTOCOL_NOTES §3) hashes ``canonical_json(payload)``: keys sorted by code
point, no whitespace, raw UTF-8 (only ``"``, ``\\`` and control characters escaped, as
serde_json does) and floats laid out the way ryu does (``1e16``, ``1e-7``, ``0.00001``).
orjson produces exactly that except for one detail, the ``+`` of positive exponents, so the fast
path is a single ``orjson.dumps`` and a rare slow path re-walks the value.

Values that cannot be written identically by every verifier are refused with
:class:`~cra_agents.TraceError` rather than written differently: NaN and infinities (serde_json
has no such numbers), integers outside the 64-bit range, lone surrogates, non-string keys and
keys that would need escaping (Rust writes keys verbatim).
"""

from __future__ import annotations

import hashlib
import math
import operator
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from cra_agents._exceptions import TraceError
from cra_agents._frozen import FrozenDict

__all__ = ["Template", "canonical_json", "digest", "sha256_hex"]

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _refuse(value: Any) -> Any:
    if isinstance(value, Mapping):  # MappingProxyType and other read-only mappings
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


_frozen: dict[int, tuple[FrozenDict, bytes]] = {}
_FROZEN_MAX = 4096


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` as canonical JSON (UTF-8 bytes).

    A :class:`~cra_agents._frozen.FrozenDict` cannot change, so its bytes are computed once
    and reused (payloads shared by many events, such as a resolve plan's).

    Raises:
        TraceError: ``value`` holds something canonical JSON cannot carry exactly.
    """
    if type(value) is FrozenDict:
        hit = _frozen.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        out = _canonical(value)
        if len(_frozen) >= _FROZEN_MAX:
            _frozen.clear()
        _frozen[id(value)] = (value, out)  # the strong reference keeps the id unique
        return out
    return _canonical(value)


def _canonical(value: Any) -> bytes:
    try:
        out = orjson.dumps(value, option=_OPTIONS, default=_refuse)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise TraceError(
            f"value is not canonical JSON: {exc}", details={"reason": "not_json"}
        ) from exc
    # ``92 in out`` (a byte value) is a plain memchr, much cheaper than a bytes needle; a "u"
    # or a "+" must be there for "null" or "e+" to be.
    keys = 92 in out  # a backslash: a key may need escaping (a string's escapes do not matter)
    # a non-finite float (written "null") or a positive exponent
    floats = (117 in out and b"null" in out) or (43 in out and b"e+" in out)
    if (keys or floats) and _differs(value, keys, floats):
        # Only keys and floats can make orjson's output differ from canonical JSON; a None, a
        # newline or "e+" inside a string merely looks suspicious and stays on the fast path.
        return _slow(value)
    return out


_EXPONENT = 1e16  # from here on orjson writes "1e+16" where serde_json (ryu) writes "1e16"


def _differs(value: Any, keys: bool, floats: bool) -> bool:
    """Whether orjson's output of ``value`` can differ from canonical JSON (or must be refused).

    Only floats (non-finite ones orjson writes as ``null``; positive exponents) and keys
    (non-strings; ones that need escaping) can; string contents never do. ``keys`` and
    ``floats`` say which of the two the output's markers leave possible.
    """
    kind = type(value)
    if kind is float:
        return floats and (not math.isfinite(value) or abs(value) >= _EXPONENT)
    if kind is dict or kind is FrozenDict or isinstance(value, Mapping):
        for key, item in value.items():
            if keys and (type(key) is not str or not _PLAIN_KEY(key)):
                return True
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                continue
            if _differs(item, keys, floats):
                return True
        return False
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        for item in value:
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                continue
            if _differs(item, keys, floats):
                return True
        return False
    return floats and isinstance(value, float) and _differs(float(value), keys, floats)


#: Keys serde_json and orjson write alike: no quote, backslash or control character.
_PLAIN_KEY = re.compile(r'[^"\\\x00-\x1f]*').fullmatch


def _slow(value: Any) -> bytes:
    parts: list[bytes] = []
    _write(value, parts, "")
    return b"".join(parts)


def _write(value: Any, out: list[bytes], path: str) -> None:
    if value is None or isinstance(value, str | int):  # bool is an int
        out.append(orjson.dumps(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise TraceError(
                f"{value!r} at {path or '/'} has no JSON form; send it as a string",
                details={"reason": "non_finite_float", "path": path},
            )
        out.append(orjson.dumps(value).replace(b"e+", b"e"))
    elif isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TraceError(
                    f"key {key!r} at {path or '/'} is not a string",
                    details={"reason": "non_string_key", "path": path},
                )
            if '"' in key or "\\" in key or any(ord(c) < 0x20 for c in key):
                raise TraceError(
                    f"key {key!r} at {path or '/'} needs escaping, which verifiers disagree on",
                    details={"reason": "unsafe_key", "path": path},
                )
            items.append((key, item))
        items.sort(key=lambda kv: kv[0])
        out.append(b"{")
        for index, (key, item) in enumerate(items):
            if index:
                out.append(b",")
            out.append(orjson.dumps(key))
            out.append(b":")
            _write(item, out, f"{path}/{key}")
        out.append(b"}")
    elif isinstance(value, list | tuple):
        out.append(b"[")
        for index, item in enumerate(value):
            if index:
                out.append(b",")
            _write(item, out, f"{path}/{index}")
        out.append(b"]")
    else:
        # UUIDs, enums and the like: whatever orjson makes of them (validated by the fast path).
        out.append(orjson.dumps(value, option=_OPTIONS, default=_refuse))


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def digest(value: Any) -> str:
    """SHA-256 hex of the canonical JSON of ``value`` (``parameters_hash``, ``result_hash``)."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


class Template:
    """A payload builder's canonical JSON with some values left open, filled per call.

    Derived from the builder itself, called once with marker strings for the open values, so a
    payload's shape stays defined in one place (``cra_agents.protocol.events``). Keys sort the
    same whatever their values, so :meth:`fill` gives exactly the bytes ``canonical_json`` gives
    for the builder's dict, without building the dict or re-serialising it per call.

    Open values must be strings or integers (what JSON writes one way only); anything whose
    presence changes the keys (an optional field) belongs to the template's identity instead.

    Args:
        builder: A payload builder taking keyword arguments.
        open_names: The arguments :meth:`fill` supplies, in that order.
        fixed: The other arguments.
    """

    __slots__ = ("_format", "_pick")

    def __init__(
        self, builder: Callable[..., Mapping[str, Any]], open_names: Sequence[str], **fixed: Any
    ) -> None:
        token = secrets.token_hex(8)
        markers = {name: f"cra-open-{index}-{token}" for index, name in enumerate(open_names)}
        out = canonical_json(builder(**fixed, **markers))
        found = []
        for index, name in enumerate(open_names):
            quoted = orjson.dumps(markers[name])
            if out.count(quoted) != 1:
                raise ValueError(f"{name!r} is not a value of the payload exactly once")
            found.append((out.index(quoted), index, quoted))
        found.sort()
        text = out.replace(b"%", b"%%")
        for _, _, quoted in found:
            text = text.replace(quoted, b"%b")
        self._format = text
        order = tuple(index for _, index, _ in found)
        # The values in the order the payload holds them: as given when keys sort that way.
        self._pick: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = (
            None if order == tuple(range(len(order))) else operator.itemgetter(*order)
        )

    def fill(self, *values: str | int) -> bytes:
        """The payload's canonical JSON with ``values`` (in ``open_names`` order) filled in."""
        pick = self._pick
        return self._format % tuple(map(orjson.dumps, values if pick is None else pick(values)))
