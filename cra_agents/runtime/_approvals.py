"""Approvals: requests shown to a human (or a policy bot) and the answers they give.

An approval is bound to the session, the action, the digest of the exact arguments and the
atlas digest it was decided under; it is single use and expires. Replaying it for other
arguments, another session or action, after expiry, after a reload of the atlas, or twice is
refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = [
    "Approval",
    "ApprovalDecision",
    "ApprovalHandler",
    "ApprovalRequest",
    "ApprovalStore",
    "auto_deny",
]


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What an approver is asked to decide."""

    session_id: str
    agent_id: str
    action_id: str
    arguments: Mapping[str, Any]
    digest: str
    risk_tier: str
    reason: str
    policy_id: str


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """An approver's answer, with who gave it and why."""

    approved: bool
    approver: str = "unknown"
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    """A granted approval: single use, bound to session, action, arguments and atlas."""

    approval_id: str
    session_id: str
    action_id: str
    digest: str
    atlas_digest: str
    approver: str
    expires_at: float  # time.monotonic()
    reason: str | None = None


ApprovalAnswer: TypeAlias = "bool | ApprovalDecision"
ApprovalHandler: TypeAlias = (
    "Callable[[ApprovalRequest], ApprovalAnswer | Awaitable[ApprovalAnswer]] | Literal['auto_deny']"
)


def auto_deny(request: ApprovalRequest) -> ApprovalDecision:
    """The default handler: nobody is there to approve, so nothing is approved."""
    return ApprovalDecision(False, approver="auto_deny", reason="no approval handler configured")


@dataclass
class ApprovalStore:
    """Approvals granted and not yet used, and the ids of those already used."""

    _granted: dict[str, Approval] = field(default_factory=dict)
    _used: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, approval: Approval) -> None:
        """Keep a granted approval until it is used or expires."""
        with self._lock:
            self._granted[approval.approval_id] = approval

    def consume(
        self,
        approval_id: str,
        *,
        session_id: str,
        action_id: str,
        digest: str,
        atlas_digest: str,
    ) -> tuple[Approval | None, str]:
        """Use an approval once. Returns ``(approval, "")`` or ``(None, why_not)``."""
        with self._lock:
            if approval_id in self._used:
                return None, "approval_already_used"
            approval = self._granted.get(approval_id)
            if approval is None:
                return None, "approval_unknown"
            if approval.expires_at < time.monotonic():
                del self._granted[approval_id]
                return None, "approval_expired"
            for name, want, have in (
                ("session", approval.session_id, session_id),
                ("action", approval.action_id, action_id),
                ("arguments", approval.digest, digest),
                ("atlas", approval.atlas_digest, atlas_digest),
            ):
                if want != have:
                    return None, f"approval_for_other_{name}"
            del self._granted[approval_id]
            self._used.add(approval_id)
            return approval, ""
