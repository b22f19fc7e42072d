from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import orjson
import pytest

from cra_agents._frozen import FrozenDict, FrozenList, freeze


class TestFreeze:
    def test_nested_values_are_read_only(self):
        """Every dict and list inside a frozen value refuses changes."""
        value = freeze({"a": [1, {"b": 2}], "c": "x"})
        assert isinstance(value, FrozenDict)
        assert isinstance(value["a"], FrozenList)
        mutations: list[Callable[[], object]] = [
            lambda: value.__setitem__("a", 1),
            lambda: value.pop("a"),
            lambda: value.update(x=1),
            lambda: value.clear(),
            lambda: value["a"].append(3),
            lambda: value["a"].__setitem__(0, 9),
            lambda: value["a"][1].__setitem__("b", 3),
        ]
        for mutate in mutations:
            with pytest.raises(TypeError, match="read-only"):
                mutate()
        assert value == {"a": [1, {"b": 2}], "c": "x"}

    def test_deepcopy_thaws(self):
        """``copy.deepcopy`` gives plain, mutable containers."""
        value = freeze({"a": [1, {"b": 2}]})
        thawed = copy.deepcopy(value)
        assert type(thawed) is dict
        assert type(thawed["a"]) is list
        assert type(thawed["a"][1]) is dict
        thawed["a"].append(3)
        assert value["a"] == [1, {"b": 2}]
        assert type(copy.copy(value)) is dict
        assert type(copy.copy(value["a"])) is list
        assert copy.deepcopy(freeze([1, [2]])) == [1, [2]]

    def test_pickle_and_json_round_trip(self):
        """Frozen values pickle back frozen and serialise as plain JSON."""
        value = freeze({"a": [1, 2]})
        restored = pickle.loads(pickle.dumps(value))
        assert isinstance(restored, FrozenDict)
        assert isinstance(restored["a"], FrozenList)
        assert orjson.loads(orjson.dumps(value)) == {"a": [1, 2]}

    def test_scalars_pass_through(self):
        """Scalars are returned as they are."""
        assert freeze(3) == 3
        assert freeze(None) is None
