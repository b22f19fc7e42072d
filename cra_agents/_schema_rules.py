"""What an action's ``parameters_schema`` may ask of a model-chosen argument, and in what time.

Schema patterns run on strings a model chose, at every guarded call. Python's ``re``, which
jsonschema and fastjsonschema both use, backtracks: ``^(a+)+$`` takes minutes on 41
characters. Here patterns run on RE2 (``google-re2``), whose matching time is linear in the
input. RE2 has no backreferences or lookaround; a schema using them cannot be checked in
bounded time, so it counts as invalid: calls against it are refused, and lint reports it
(``L015``). ``format`` values no installed checker knows would pass anything; lint reports
them too (``L016``).

:func:`linear_validator` gives a jsonschema validator class whose ``pattern``,
``patternProperties`` and ``additionalProperties`` keywords match with RE2 (the last decides
which properties ``patternProperties`` covers). jsonschema's ``unevaluatedProperties`` would
still match ``patternProperties`` with ``re``, so a schema using both is refused.

jsonschema and re2 are imported on first use: ``import cra_agents`` loads neither.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PatternError", "SchemaProblem", "linear_validator", "schema_problems", "search"]

#: Keywords whose values are data, not schemas: a "pattern" key inside them is no pattern.
_DATA = frozenset({"enum", "const", "default", "examples"})
#: Keywords whose values map names to schemas.
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_CACHE_SIZE = 1024
_compiled: dict[str, Any] = {}
_classes: dict[type, type] = {}
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    """A part of a schema that cannot be enforced as written."""

    code: str  # "L015" pattern RE2 cannot run, "L016" unknown format, "L017" unevaluated...
    path: str  # JSON pointer inside the schema
    message: str


class PatternError(ValueError):
    """A pattern RE2 cannot compile."""


def _compile(pattern: str) -> Any:
    hit = _compiled.get(pattern)
    if hit is not None:
        return hit
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would write each refusal to stderr
    try:
        # Compiled and matched as UTF-8 bytes (RE2's own encoding): the same matches as on
        # str, without the wrapper's per-call mapping of byte offsets back to characters.
        hit = re2.compile(pattern.encode("utf-8", "surrogatepass"), options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise PatternError(f"pattern {pattern!r} cannot run in linear time: {detail}") from None
    with _lock:
        if len(_compiled) >= _CACHE_SIZE:
            _compiled.pop(next(iter(_compiled)))  # the oldest
        _compiled[pattern] = hit
    return hit


def search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``text`` (RE2; :class:`PatternError` if not RE2)."""
    return _compile(pattern).search(text.encode("utf-8", "surrogatepass")) is not None


class LinearPattern:
    """A schema pattern for fastjsonschema's generated code: its ``search``, on RE2.

    Raises:
        PatternError: RE2 cannot run the pattern.
    """

    __slots__ = ("_anchor", "_match", "_regex")

    def __init__(self, pattern: str) -> None:
        import re2

        self._regex = _compile(pattern)
        # The binding's own matcher, without the wrapper's generator and Match object: a
        # quarter of the cost per call (0.55 against 1.45 µs). The public API otherwise.
        self._match = getattr(getattr(self._regex, "_regexp", None), "Match", None)
        self._anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)

    def search(self, text: str) -> bool:
        """Whether the pattern matches somewhere in ``text``."""
        data = text.encode("utf-8", "surrogatepass")
        if self._match is None or self._anchor is None:
            return self._regex.search(data) is not None
        return bool(self._match(self._anchor, data, 0, len(data))[0][0] >= 0)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _walk(schema: object, path: str) -> Iterator[tuple[str, str, Any]]:
    """``(pointer, keyword, value)`` of each pattern, format and unevaluatedProperties.

    ``schema`` is walked however deep; each ``patternProperties`` name counts as a pattern.
    """
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            yield from _walk(item, f"{path}/{index}")
        return
    if not isinstance(schema, Mapping):
        return
    for key, value in schema.items():
        where = f"{path}/{_escape(str(key))}"
        if key in _DATA:
            continue
        if key in ("pattern", "format") and isinstance(value, str):
            yield where, key, value
        elif key in _SCHEMA_MAPS and isinstance(value, Mapping):
            # Names to schemas: a property called "enum" or "pattern" is a name, not a keyword.
            for name, subschema in value.items():
                if key == "patternProperties":
                    yield f"{where}/{_escape(str(name))}", key, name
                yield from _walk(subschema, f"{where}/{_escape(str(name))}")
        elif key == "unevaluatedProperties":
            yield where, key, value
            yield from _walk(value, where)
        else:
            yield from _walk(value, where)


def schema_problems(
    schema: Mapping[str, Any], known_formats: frozenset[str] | None = None
) -> list[SchemaProblem]:
    """What of ``schema`` cannot be enforced as written, each with its JSON pointer.

    Patterns RE2 cannot run, formats no checker knows, and ``unevaluatedProperties`` beside
    ``patternProperties``.

    Args:
        schema: A ``parameters_schema``.
        known_formats: The formats checked; ``None`` skips the format check.
    """
    found: list[SchemaProblem] = []
    unevaluated: list[str] = []
    pattern_properties = False
    for where, keyword, value in _walk(schema, ""):
        if keyword == "format":
            if known_formats is not None and value not in known_formats:
                found.append(
                    SchemaProblem(
                        "L016",
                        where,
                        f"format {value!r} is not checked by any installed checker, so any "
                        "string passes it",
                    )
                )
        elif keyword == "unevaluatedProperties":
            unevaluated.append(where)
        else:
            pattern_properties = pattern_properties or keyword == "patternProperties"
            try:
                _compile(value)
            except PatternError as exc:
                found.append(SchemaProblem("L015", where, str(exc)))
    if pattern_properties:
        found.extend(
            SchemaProblem(
                "L015",
                where,
                "unevaluatedProperties beside patternProperties would match property names "
                "with a backtracking engine; use additionalProperties",
            )
            for where in unevaluated
        )
    return found


def _extras(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> Iterator[str]:
    """Properties neither ``properties`` nor a ``patternProperties`` pattern covers (RE2)."""
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    for name in instance:
        if name in properties:
            continue
        if any(search(pattern, name) for pattern in patterns):
            continue
        yield name


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    # jsonschema's own keyword, with its pattern matching done by RE2.
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    extras = set(_extras(instance, schema))
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        joined = ", ".join(repr(each) for each in sorted(extras))
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(
                f"Additional properties are not allowed ({joined} {verb} unexpected)"
            )


_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


def linear_validator(cls: type) -> type:
    """``cls`` (a jsonschema validator class) with its regex keywords matched by RE2."""
    hit = _classes.get(cls)
    if hit is not None:
        return hit
    from jsonschema import validators

    mine = {key: fn for key, fn in _KEYWORDS.items() if key in cls.VALIDATORS}  # type: ignore[attr-defined]
    extended: type = validators.extend(cls, mine)  # type: ignore[no-untyped-call]
    with _lock:
        _classes[cls] = extended
    return extended
