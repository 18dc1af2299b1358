"""Verifying the audit trail: walk the whole chain in id order and report the first problem.

``audit_verify_chain`` (``./dev audit_verify``) checks each event's link and hash, the signed chain
head, and any checkpoints kept outside the database (``portal.audit_checkpoints``).
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from portal import audit_keys
from portal.audit import GENESIS_HASH, event_hash, head_problem
from portal.audit_checkpoints import AuditCheckpoint
from portal.audit_keys import UnknownAuditKey
from portal.models import AuditChainHead, AuditEvent


@dataclass(frozen=True)
class ChainReport:
    """The outcome of ``audit_verify_chain``: ``ok``, or the first problem found."""

    checked: int
    first_broken_id: int | None = None
    reason: str = ""
    unkeyed: int = 0
    key_ids: tuple[str, ...] = ()
    checkpoints_matched: int = 0
    newest_checkpoint: AuditCheckpoint | None = None

    @property
    def ok(self) -> bool:
        return not self.reason


def _checkpoint_problem(checkpoint: AuditCheckpoint) -> str:
    try:
        valid = audit_keys.mac_matches(checkpoint.key_id, checkpoint.message(), checkpoint.mac)
    except UnknownAuditKey as exc:
        return (
            f"checkpoint {checkpoint.source} is signed with the audit key {exc.key_id!r}, which is not configured "
            "(keep retired keys in AUDIT_HMAC_RETIRED_KEYS)"
        )
    if not valid:
        return (
            f"checkpoint {checkpoint.source} (event #{checkpoint.event_id}) does not match its signature: "
            "forged or altered"
        )
    return ""


class _Broken(Exception):
    """The walk found a problem: the event to name (or None) and why."""

    def __init__(self, first_broken_id: int | None, reason: str) -> None:
        super().__init__(reason)
        self.first_broken_id = first_broken_id
        self.reason = reason


@dataclass
class _Walk:
    """The state of one walk along the chain (what the report counts, and where it stands)."""

    head: AuditChainHead
    pending: deque[AuditCheckpoint]
    head_problem: str
    prev: str = GENESIS_HASH
    checked: int = 0
    unkeyed: int = 0
    matched: int = 0
    last_id: int = 0
    key_ids: set[str] = field(default_factory=set)
    newest: AuditCheckpoint | None = None
    # The first event after the newest matching checkpoint: a rewrite found by a later
    # checkpoint happened between the two.
    range_start: int | None = None

    def report(self, first_broken_id: int | None, reason: str) -> ChainReport:
        return ChainReport(
            self.checked,
            first_broken_id,
            reason,
            self.unkeyed,
            tuple(sorted(self.key_ids)),
            self.matched,
            self.newest,
        )

    def event(self, event: AuditEvent) -> None:
        """Check one event (in id order) and the checkpoints it closes; ``_Broken`` for the first problem."""
        if self.pending and self.pending[0].event_id < event.id:
            missing = self.pending[0]
            raise _Broken(
                missing.event_id,
                f"it is missing although the checkpoint {missing.source} of {missing.at} covers it (removed)",
            )
        if self.range_start is None:
            self.range_start = event.id
        if event.prev_hash != self.prev:
            raise _Broken(
                event.id,
                "its prev_hash does not match the previous event's hash (an event before it was removed or altered)",
            )
        self._keyed(event)
        if not hmac.compare_digest(self._expected_hash(event), event.hash):
            raise _Broken(event.id, "its content does not match its hash (the row was altered)")
        self.prev = event.hash
        self.checked += 1
        self.last_id = event.id
        self._close_checkpoints(event)

    def _keyed(self, event: AuditEvent) -> None:
        if event.key_id:
            self.key_ids.add(event.key_id)
            return
        if event.id > self.head.legacy_until:
            raise _Broken(
                event.id,
                f"it is not keyed although every event after #{self.head.legacy_until} is: "
                "the row was altered and rehashed with the plain SHA-256",
            )
        self.unkeyed += 1

    @staticmethod
    def _expected_hash(event: AuditEvent) -> str:
        try:
            return event_hash(event)
        except UnknownAuditKey as exc:
            raise _Broken(
                event.id,
                f"its hash is keyed with the audit key {exc.key_id!r}, which is not configured, so it cannot "
                "be verified (keep retired keys in AUDIT_HMAC_RETIRED_KEYS)",
            ) from None

    def _close_checkpoints(self, event: AuditEvent) -> None:
        while self.pending and self.pending[0].event_id == event.id:
            checkpoint = self.pending.popleft()
            if checkpoint.hash != event.hash:
                raise _Broken(
                    self.range_start,
                    f"the trail up to #{event.id} no longer hashes to the value of checkpoint {checkpoint.source} "
                    f"of {checkpoint.at}: events #{self.range_start}-#{event.id} were rewritten",
                )
            self.matched += 1
            self.newest = checkpoint
            self.range_start = None

    def head_moved(self, upto: int) -> int | None:
        """At the end of the events the head named: follow a head that moved since; None when the walk is over.

        Events newer than the head read at the start were appended since (then the head moved
        too: read it again and go on), or inserted behind the application's back.
        """
        newer = AuditEvent.objects.filter(id__gt=upto).order_by("id").values_list("id", flat=True).first()
        if newer is None:
            return None
        latest = AuditChainHead.objects.filter(pk=1).first()
        if latest is None:
            raise _Broken(None, head_problem(latest))
        self.head_problem = self.head_problem or head_problem(latest)
        if (latest.last_event_id or 0) <= upto:
            raise _Broken(newer, f"it comes after the chain head (#{upto}): it was inserted behind the application")
        self.head = latest
        return latest.last_event_id

    def finish(self) -> None:
        """After the last event: what the checkpoints and the head say must match where the trail ends."""
        head, last_id = self.head, self.last_id
        if self.pending:
            furthest = self.pending[-1]
            raise _Broken(
                last_id + 1,
                f"the trail ends at #{last_id} but checkpoint {furthest.source} of {furthest.at} covers events up to "
                f"#{furthest.event_id}: events #{last_id + 1}-#{furthest.event_id} are missing (removed)",
            )
        if self.head_problem:
            raise _Broken(None, self.head_problem)
        if head.unverified_since is not None:
            raise _Broken(
                head.unverified_since,
                f"when event #{head.unverified_since} was recorded the chain head did not verify (the head row had "
                "been altered in the database): the trail before it cannot be trusted",
            )
        if not self.checked and head.last_hash != GENESIS_HASH:
            raise _Broken(
                head.last_event_id,
                f"the trail is empty but the chain head holds the hash of event #{head.last_event_id}: "
                "every event was removed",
            )
        if head.last_hash != self.prev or (head.last_event_id or 0) != last_id:
            raise _Broken(
                head.last_event_id or last_id,
                f"the trail ends at #{last_id} but the chain head is at #{head.last_event_id}: "
                "the newest events were removed",
            )


def audit_verify_chain(*, batch_size: int = 5000, checkpoints: Iterable[AuditCheckpoint] = ()) -> ChainReport:
    """Walk the whole trail in id order and report the first problem.

    Checks each event's link to the previous one and its hash (keyed, or unkeyed only up to
    the head's ``legacy_until``), the signed chain head (the trail must end exactly where
    the head says, an empty trail needs a genesis head), and each given checkpoint: the
    event it names must still exist and still have the checkpointed hash.
    """
    ordered = sorted(checkpoints, key=lambda c: c.event_id)
    for checkpoint in ordered:
        problem = _checkpoint_problem(checkpoint)
        if problem:
            return ChainReport(0, None, problem)
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is None:
        return ChainReport(0, None, head_problem(head))
    # A head that does not verify is reported after the walk, which can name an altered event
    # more precisely; its legacy_until cannot be trusted, but the report is a failure anyway.
    walk = _Walk(head=head, pending=deque(ordered), head_problem=head_problem(head))
    try:
        upto: int | None = head.last_event_id or 0
        while upto is not None:
            batch = list(AuditEvent.objects.filter(id__gt=walk.last_id, id__lte=upto).order_by("id")[:batch_size])
            if not batch:
                upto = walk.head_moved(upto)
                continue
            for event in batch:
                walk.event(event)
        walk.finish()
    except _Broken as broken:
        return walk.report(broken.first_broken_id, broken.reason)
    return walk.report(None, "")
