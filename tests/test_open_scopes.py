"""One rule for a call outside every ``cra.session`` block, shared by Runtime and Client."""

from __future__ import annotations

import pytest

import cra_agents as cra
from cra_agents.runtime import OpenScopes


def test_a_call_that_escaped_an_open_block_is_refused_else_it_gets_the_implicit_session():
    scopes = OpenScopes()
    made: list[str] = []

    def create() -> str:
        made.append(f"s{len(made)}")
        return made[-1]

    scopes.opened("a")
    scopes.opened("a")
    scopes.closed("a")
    with pytest.raises(cra.InvalidRequestError) as err:
        scopes.implicit(enabled=True, create=create, alive=lambda s: True)
    assert err.value.details == {"reason": "session_not_propagated", "open_sessions": 1}
    scopes.closed("a")
    with pytest.raises(cra.InvalidRequestError) as err:
        scopes.implicit(enabled=False, create=create, alive=lambda s: True)
    assert err.value.details == {"reason": "no_session"}
    assert made == []  # refused before anything was opened
    assert scopes.implicit(enabled=True, create=create, alive=lambda s: True) == "s0"
    assert scopes.implicit(enabled=True, create=create, alive=lambda s: True) == "s0"
    # Ended (not alive, or forgotten): the next call opens another.
    assert scopes.implicit(enabled=True, create=create, alive=lambda s: s != "s0") == "s1"
    scopes.forget("other")
    assert scopes.implicit(enabled=True, create=create, alive=lambda s: True) == "s1"
    scopes.forget("s1")
    assert scopes.implicit(enabled=True, create=create, alive=lambda s: True) == "s2"


def test_two_callers_racing_for_the_implicit_session_share_the_first():
    scopes = OpenScopes()

    def create_while_another_wins() -> str:
        # Another thread created and stored its session while this one was creating.
        scopes._implicit = "first"
        return "second"

    got = scopes.implicit(enabled=True, create=create_while_another_wins, alive=lambda s: True)
    assert got == "first"
