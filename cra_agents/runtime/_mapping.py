"""The one rule that maps a tool to the atlas action it performs.

Every adapter (``@guarded``, ``CRAMiddleware``, ``guard_tool``, the callback handler, MCP)
maps through :meth:`ToolMap.map` (``Runtime.map_tool``), in this order:

1. an explicit action id (``@cra.guarded("github.issue.create")``, ``guard_tool(action_id=)``);
2. the adapter's ``actions`` table (tool name → action id);
3. the one declared action whose ``action_id``, ``name`` or ``executor`` equals the tool's name.

No match, or several, raises :class:`~cra_agents.ActionNotFoundError` naming the loaded atlases
or the candidates; the gate records that refusal like any denial.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cra_agents._exceptions import ActionNotFoundError
from cra_agents.atlas import Atlas

__all__ = ["ToolMap"]


class ToolMap:
    """Tool names → declared action ids, for a fixed set of atlases (built once)."""

    __slots__ = ("_atlas_ids", "_index")

    def __init__(self, atlases: Iterable[Atlas]) -> None:
        index: dict[str, list[str]] = {}
        atlas_ids = []
        for atlas in atlases:
            atlas_ids.append(atlas.atlas_id)
            for action in atlas.actions:
                for key in {action.action_id, action.name, action.executor}:
                    if key:
                        found = index.setdefault(key, [])
                        if action.action_id not in found:
                            found.append(action.action_id)
        self._index = {k: tuple(v) for k, v in index.items()}
        self._atlas_ids = tuple(atlas_ids)

    def map(
        self,
        tool: str,
        *,
        action_id: str | None = None,
        actions: Mapping[str, str] | None = None,
    ) -> str:
        """The action ``tool`` performs (see the module docstring for the rule).

        Raises:
            ActionNotFoundError: no declared action matches, or several do.
        """
        if action_id is not None:
            return action_id
        if actions and tool in actions:
            return actions[tool]
        found = self._index.get(tool, ())
        if len(found) == 1:
            return found[0]
        if not found:
            loaded = ", ".join(self._atlas_ids) or "none"
            raise ActionNotFoundError(
                f"no action of the loaded atlases ({loaded}) has id, executor or name "
                f"{tool!r}; name the action (@cra.guarded('<action.id>'), actions={{...}})",
                details={"tool": tool, "reason": "unmapped_tool"},
            )
        raise ActionNotFoundError(
            f"{tool!r} matches several actions ({', '.join(found)}); name the action explicitly",
            details={"tool": tool, "candidates": list(found), "reason": "ambiguous_tool"},
        )
