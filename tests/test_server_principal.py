"""The principal a server request acts for: scopes, agent ids, session ownership."""

from __future__ import annotations

import pytest

from cra_agents import ForbiddenError
from cra_agents.server._principal import OWNER_KEY, Principal, owns


def test_scopes_and_agent_ids_are_enforced():
    reader = Principal("key:dash", frozenset({"read"}))
    reader.require("read")
    reader.require("read", "any-agent")  # no agent restriction
    with pytest.raises(ForbiddenError, match="may not write") as err:
        reader.require("write")
    assert err.value.details == {"reason": "scope", "required": "write"}
    bot = Principal("key:bot", frozenset({"read", "write"}), frozenset({"triage-bot"}))
    bot.require("write", "triage-bot")
    with pytest.raises(ForbiddenError, match="'deploy-bot'") as err:
        bot.require("write", "deploy-bot")
    assert err.value.status == 403 and err.value.details["reason"] == "agent_id"


def test_a_session_belongs_to_the_principal_that_created_it():
    alice = Principal("jwt:alice", frozenset({"read"}))
    assert owns(alice, {OWNER_KEY: "jwt:alice", "other": 1})
    assert not owns(alice, {OWNER_KEY: "jwt:bob"})
    assert not owns(alice, {})
    assert not owns(alice, None)
