"""Context selection: inline blocks and file packs, compiled once per atlas.

Rules (PROTOCOL_NOTES §4.6, recommended reading):

* inline block, ``always``: always included;
* ``on_match`` (the default): a keyword is a case-insensitive substring of the goal, or a part
  of an ``inject_when`` entry (split on ``.``) occurs in the goal; a block with neither keywords
  nor ``inject_when`` is included;
* ``on_demand``: ``task.context_hints`` names the block id or one of its keywords;
* ``risk_based``: ``task.risk_tier`` is one of its ``risk_tiers``;
* file pack: included when its conditions hold (none = always; a condition that cannot be
  evaluated leaves it out); one block per file that exists, missing files are skipped;
* ``also_inject`` pulls in other blocks or packs of the same atlas, transitively.

Blocks are ordered by priority, highest first, ties in declaration order; a file named by
several selected packs is injected once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from cachetools import LRUCache

from cra_agents.atlas import Atlas
from cra_agents.policy import CompiledConditions, ConditionContext, Unevaluable
from cra_agents.protocol import ContextBlock, trusted

__all__ = ["ContextCandidate", "compile_context", "select_context"]

_MEDIA = {".md": "text/markdown", ".markdown": "text/markdown", ".json": "application/json"}


@dataclass(frozen=True, slots=True)
class ContextCandidate:
    """A block that may be injected, with the rule that decides it."""

    block: ContextBlock
    context_id: str
    mode: str
    keywords: tuple[str, ...]
    inject_parts: tuple[str, ...]
    risk_tiers: frozenset[str]
    conditions: CompiledConditions | None
    also_inject: tuple[str, ...]
    order: int

    def wanted(self, goal: str, hints: frozenset[str], ctx: ConditionContext) -> bool:
        """Whether the rule selects this block for the request."""
        mode = self.mode
        if mode == "always":
            return True
        if mode == "on_demand":
            return self.context_id in hints or any(k in hints for k in self.keywords)
        if mode == "risk_based":
            return ctx.risk_tier in self.risk_tiers
        if mode == "pack":
            if self.conditions is None:
                return True
            try:
                return self.conditions.matches(ctx)
            except Unevaluable:
                return False
        if not self.keywords and not self.inject_parts:
            return True
        return any(k in goal for k in self.keywords) or any(p in goal for p in self.inject_parts)


def _token_estimate(text: str) -> int:
    return len(text.encode("utf-8")) // 4


def _block(
    block_id: str, source: str, media: str, content: str, priority: int, metadata: dict[str, str]
) -> ContextBlock:
    return trusted(
        ContextBlock,
        {
            "block_id": block_id,
            "source": source,
            "content_type": media,
            "content": content,
            "priority": priority,
            "token_estimate": _token_estimate(content),
            "metadata": metadata,
        },
    )


def _compile(atlas: Atlas) -> tuple[ContextCandidate, ...]:
    manifest = atlas.manifest
    out: list[ContextCandidate] = []
    for block in manifest.context_blocks:
        parts = tuple(
            part.lower()
            for entry in block.inject_when
            for part in entry.split(".")
            if len(part) > 2
        )
        out.append(
            ContextCandidate(
                block=_block(
                    block.context_id,
                    atlas.atlas_id,
                    block.content_type,
                    block.content,
                    block.priority,
                    {"name": block.name or block.context_id},
                ),
                context_id=block.context_id,
                mode=block.inject_mode,
                keywords=tuple(k.lower() for k in block.keywords),
                inject_parts=parts,
                risk_tiers=frozenset(block.risk_tiers),
                conditions=None,
                also_inject=tuple(block.also_inject),
                order=len(out),
            )
        )
    for pack in manifest.context_packs:
        present = [f for f in pack.files if f in atlas.context_files]
        budget = None if pack.max_tokens is None else pack.max_tokens
        for index, name in enumerate(present):
            content = atlas.context_files[name]
            if budget is not None:
                budget -= _token_estimate(content)
                if budget < 0:
                    break
            suffix = name[name.rfind(".") :].lower() if "." in name else ""
            block_id = pack.pack_id if len(pack.files) == 1 else f"{pack.pack_id}:{index}"
            mode = "on_demand" if pack.inject_mode == "on_demand" else "pack"
            out.append(
                ContextCandidate(
                    block=_block(
                        block_id,
                        atlas.atlas_id,
                        _MEDIA.get(suffix, "text/plain"),
                        content,
                        pack.priority,
                        {"name": pack.name, "source_pack": pack.pack_id, "file": name},
                    ),
                    context_id=pack.pack_id,
                    mode=mode,
                    keywords=(),
                    inject_parts=(),
                    risk_tiers=frozenset(),
                    conditions=CompiledConditions(pack.conditions) if pack.conditions else None,
                    also_inject=(),
                    order=len(out),
                )
            )
    return tuple(out)


_cache: LRUCache[tuple[str, str, str], tuple[ContextCandidate, ...]] = LRUCache(maxsize=128)
_lock = threading.Lock()


def compile_context(atlas: Atlas) -> tuple[ContextCandidate, ...]:
    """The context candidates of ``atlas``, cached by atlas id, version and digest."""
    key = (atlas.atlas_id, atlas.version, atlas.digest)
    with _lock:
        hit = _cache.get(key)
    if hit is None:
        hit = _compile(atlas)
        with _lock:
            _cache[key] = hit
    return hit


def select_context(
    candidates: Sequence[tuple[int, ContextCandidate]],
    goal: str,
    hints: Sequence[str],
    ctx: ConditionContext,
) -> list[ContextBlock]:
    """Pick and order the blocks for one request. ``candidates`` are ``(atlas_pos, c)``."""
    if not candidates:
        return []
    lowered = goal.lower()
    hint_set = frozenset(h.lower() for h in hints) | frozenset(hints)
    chosen: dict[tuple[int, int], ContextCandidate] = {}
    by_id: dict[tuple[int, str], list[ContextCandidate]] = {}
    for position, candidate in candidates:
        by_id.setdefault((position, candidate.context_id), []).append(candidate)
        if candidate.wanted(lowered, hint_set, ctx):
            chosen[(position, candidate.order)] = candidate
    pending = [(key[0], c) for key, c in chosen.items() if c.also_inject]
    while pending:
        position, candidate = pending.pop()
        for other_id in candidate.also_inject:
            for other in by_id.get((position, other_id), ()):
                key = (position, other.order)
                if key not in chosen:
                    chosen[key] = other
                    pending.append((position, other))
    ordered = sorted(chosen.items(), key=lambda item: (-item[1].block.priority, item[0]))
    blocks: list[ContextBlock] = []
    files: set[tuple[int, str]] = set()
    for (position, _), candidate in ordered:
        # A file named by several selected packs is injected once, by the highest priority.
        name = (candidate.block.metadata or {}).get("file")
        if name is not None:
            if (position, name) in files:
                continue
            files.add((position, name))
        blocks.append(candidate.block)
    return blocks
