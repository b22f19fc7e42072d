"""Validating parameters against an action's ``parameters_schema`` (jsonschema, cached)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import jsonschema
from cachetools import LRUCache

from cra_agents.atlas._load import pointer

__all__ = ["first_error"]

_cache: LRUCache[int, tuple[Mapping[str, Any], Any]] = LRUCache(maxsize=1024)
_lock = threading.Lock()


def _validator(schema: Mapping[str, Any]) -> Any:
    with _lock:
        hit = _cache.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(dict(schema))
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    with _lock:
        _cache[id(schema)] = (schema, validator)
    return validator


def first_error(schema: Mapping[str, Any], parameters: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(json_pointer, message)`` of the first violation, or ``None`` when valid.

    An invalid schema counts as a violation: parameters that cannot be checked are refused.
    """
    try:
        validator = _validator(schema)
        if validator.is_valid(
            parameters
        ):  # the common case; errors are worked out only when needed
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(parameters))
    except jsonschema.exceptions.SchemaError as exc:
        return "", f"the action's parameters_schema is itself invalid: {exc.message}"
    if error is None:
        return None
    return pointer(tuple(error.absolute_path)), error.message
