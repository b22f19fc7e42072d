"""Validating parameters against an action's ``parameters_schema``.

jsonschema is the judge. Every guarded call is checked, though, and jsonschema takes tens of
microseconds for even a small object schema, so schemas made only of keywords whose meaning is
the same in draft 7 and 2020-12 (:data:`FAST_KEYWORDS`) are also compiled with fastjsonschema,
which checks them in a few microseconds. Its verdict is used only to *accept*: when it rejects,
or the schema uses anything else (``format``, ``pattern``, ``$ref``, ``uniqueItems``...),
jsonschema decides and words the error. A differential property test holds the two to the same
verdicts.

Patterns run on model-chosen strings, so they never reach a backtracking engine: jsonschema's
regex keywords are swapped for RE2 ones (:mod:`cra_agents._schema_rules`), so are the
compiled patterns of fastjsonschema's generated check (it would use ``re``), and a schema with
a pattern RE2 cannot run counts as invalid. Every ``format`` with an installed checker is
enforced; lint reports the others.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import fastjsonschema
import jsonschema
import orjson

from cra_agents._schema_rules import (
    LinearPattern,
    PatternError,
    linear_validator,
    schema_problems,
)
from cra_agents.atlas import json_pointer

__all__ = ["FAST_KEYWORDS", "fast_validator", "first_error"]

#: Keywords the fast path understands exactly as jsonschema's 2020-12 validator does.
FAST_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "const",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "items",
        "description",
        "title",
        "default",
        "examples",
        "$comment",
    }
)
# Keywords whose value is a schema, or a map of names to schemas.
_SUBSCHEMA = frozenset({"additionalProperties", "items"})
_SCHEMA_MAP = frozenset({"properties"})
_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment"})

_Check = Callable[[Any], Any]
# id(schema) -> (schema, validator, fast check). A plain dict: lookups, on every guarded call,
# take no lock (the entry holds the schema, so its id stays unique while cached).
_cache: dict[int, tuple[Mapping[str, Any], Any, _Check | None]] = {}
_CACHE_SIZE = 1024
# canonical bytes of a schema -> (validator, fast check): compiled once per distinct schema.
_by_content: dict[bytes, tuple[Any, _Check | None]] = {}
_lock = threading.Lock()


def fast_path_applies(schema: object) -> bool:
    """Whether every keyword of ``schema`` (recursively) is in :data:`FAST_KEYWORDS`."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping):
        return False
    for key, value in schema.items():
        if key not in FAST_KEYWORDS:
            return False
        if key in _ANNOTATIONS:
            continue
        if key in _SUBSCHEMA and not fast_path_applies(value):
            return False
        if key in _SCHEMA_MAP and not (
            isinstance(value, Mapping) and all(fast_path_applies(s) for s in value.values())
        ):
            return False
        if key == "type" and not isinstance(value, str | list):
            return False
    return True


def compile_validators(schemas: Iterable[Mapping[str, Any]]) -> None:
    """Compile the validators of ``schemas`` now (a runtime does it for its atlases' actions).

    The first call of each action then pays nothing but the check itself. A schema that does
    not compile is left for that call, which refuses it with the reason.
    """
    for schema in schemas:
        try:
            _validators(schema)
        except Exception:  # noqa: BLE001, S112 - the call that uses it reports why, fail closed
            continue


def _validators(schema: Mapping[str, Any]) -> tuple[Any, _Check | None]:
    hit = _cache.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1], hit[2]
    try:  # the same schema loaded again (another runtime, a reloaded atlas): compiled once
        content: bytes | None = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS, default=dict)
    except (TypeError, orjson.JSONEncodeError):
        content = None
    compiled = _by_content.get(content) if content is not None else None
    if compiled is not None:
        with _lock:
            _remember(schema, *compiled)
        return compiled
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(dict(schema))
    for problem in schema_problems(schema):  # patterns only: formats are lint's business
        raise jsonschema.exceptions.SchemaError(f"{problem.message} (at {problem.path})")
    validator = linear_validator(cls)(schema, format_checker=cls.FORMAT_CHECKER)
    fast: _Check | None = None
    if "$schema" not in schema and fast_path_applies(schema):
        try:
            fast = _linear(fastjsonschema.compile(_plain(schema), use_default=False))
        except (fastjsonschema.JsonSchemaDefinitionException, re.error):
            fast = None  # jsonschema alone decides (fastjsonschema's rewrite of a pattern
            # that RE2 runs can be one Python's re refuses: `[$]`)
    with _lock:
        _remember(schema, validator, fast)
        if content is not None:
            if len(_by_content) >= _CACHE_SIZE:
                _by_content.pop(next(iter(_by_content)))  # the oldest
            _by_content[content] = (validator, fast)
    return validator, fast


def _linear(check: _Check) -> _Check | None:
    """``check`` with its compiled ``pattern`` regexes swapped for RE2 ones (None: cannot).

    fastjsonschema runs the generated function in a namespace whose ``REGEX_PATTERNS`` maps
    each pattern to its compiled form, called as ``.search(value)``.
    """
    patterns = getattr(check, "__globals__", {}).get("REGEX_PATTERNS")
    if patterns is None:
        return check
    if not isinstance(patterns, dict):
        return None  # a fastjsonschema this code does not know: jsonschema alone decides
    for pattern in list(patterns):
        patterns[pattern] = LinearPattern(pattern)
    return check


def _remember(schema: Mapping[str, Any], validator: Any, fast: _Check | None) -> None:
    """Cache by identity (caller holds ``_lock``)."""
    if len(_cache) >= _CACHE_SIZE:
        _cache.pop(next(iter(_cache)))  # the oldest
    _cache[id(schema)] = (schema, validator, fast)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def first_error(schema: Mapping[str, Any], parameters: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(json_pointer, message)`` of the first violation, or ``None`` when valid.

    An invalid schema counts as a violation: parameters that cannot be checked are refused.
    """
    try:
        validator, fast = _validators(schema)
        if fast is not None:
            try:
                fast(parameters)
            except fastjsonschema.JsonSchemaValueException:
                pass  # jsonschema decides and words it
            else:
                return None
        if validator.is_valid(parameters):
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(parameters))
    except jsonschema.exceptions.SchemaError as exc:
        return "", f"the action's parameters_schema is itself invalid: {exc.message}"
    except PatternError as exc:  # schema_problems finds them first: defence in depth
        return "", f"the action's parameters_schema is itself invalid: {exc}"
    if error is None:
        return None
    return json_pointer(error.absolute_path), error.message


def fast_validator(schema: Mapping[str, Any]) -> Callable[[Any], Any] | None:
    """The compiled fast check of ``schema``, if it has one (see the module docstring).

    It returns when the parameters are valid and raises when they may not be; only its
    acceptance counts: whatever it raises, :func:`first_error` judges and words the verdict.
    """
    try:
        return _validators(schema)[1]
    except Exception:  # noqa: BLE001 - an invalid schema: first_error refuses, fail closed
        return None
