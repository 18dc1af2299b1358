"""Checkpoints of the audit chain outside the database: the head (event id and hash), signed with
the audit key, appended to a file and the log where the database's users cannot rewrite them.

``audit_checkpoint_write`` appends one (the beat job ``portal.audit_checkpoint``, and after every
``AUDIT_CHECKPOINT_EVENTS`` events); ``audit_checkpoints_read`` reads a file or a shipped log back
for ``portal.audit_verify.audit_verify_chain``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.utils import timezone

from portal import audit_keys
from portal.audit import head_problem
from portal.models import AuditChainHead

log = logging.getLogger("portal.audit")

#: Marks a checkpoint in a log line; ``audit_checkpoints_read`` accepts such lines as they are.
CHECKPOINT_MARKER = "audit-checkpoint "
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(ValueError):
    """A checkpoint file holds a line that is not a well-formed checkpoint."""


@dataclass(frozen=True)
class AuditCheckpoint:
    """The chain head at a moment (event id and hash), signed with the audit key, kept outside the database."""

    event_id: int
    hash: str
    at: str
    key_id: str
    mac: str
    source: str = ""

    def message(self) -> bytes:
        return audit_keys.checkpoint_message(event_id=self.event_id, hash=self.hash, at=self.at, key_id=self.key_id)

    def line(self) -> str:
        content = {"v": 1, "event_id": self.event_id, "hash": self.hash, "at": self.at, "key_id": self.key_id}
        return json.dumps(content | {"mac": self.mac}, separators=(",", ":"))


def _checkpoint_parse(text: str, source: str) -> AuditCheckpoint | None:
    """The checkpoint in one line of a checkpoint file or a log; None for a line that holds none."""
    stripped = text.strip()
    if CHECKPOINT_MARKER in stripped:
        stripped = stripped.split(CHECKPOINT_MARKER, 1)[1].strip()
    elif not stripped.startswith("{"):
        return None
    try:
        # raw_decode: a log format may put more text after the message.
        data, _end = json.JSONDecoder().raw_decode(stripped)
    except ValueError:
        raise CheckpointError(f"{source}: not a checkpoint (the JSON cannot be read)") from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise CheckpointError(f"{source}: not a version 1 checkpoint")
    event_id, hash_, at, key_id, mac = (data.get(k) for k in ("event_id", "hash", "at", "key_id", "mac"))
    if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id < 1:
        raise CheckpointError(f"{source}: event_id must be a positive integer")
    if not isinstance(hash_, str) or not _HEX64.match(hash_) or not isinstance(mac, str) or not _HEX64.match(mac):
        raise CheckpointError(f"{source}: hash and mac must be 64 hexadecimal digits")
    if not isinstance(at, str) or not isinstance(key_id, str) or not key_id:
        raise CheckpointError(f"{source}: at and key_id must be text")
    return AuditCheckpoint(event_id=event_id, hash=hash_, at=at, key_id=key_id, mac=mac, source=source)


def audit_checkpoints_read(path: str | Path) -> list[AuditCheckpoint]:
    """Every checkpoint in a checkpoint file, or in a log holding ``audit-checkpoint {...}`` lines.

    Lines holding no checkpoint (other log messages, blank lines) are skipped; a line that
    looks like one but is malformed raises ``CheckpointError`` naming the file and line.
    Signatures are checked by ``audit_verify_chain``.
    """
    path = Path(path)
    checkpoints = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            checkpoint = _checkpoint_parse(text, f"{path.name}:{number}")
            if checkpoint is not None:
                checkpoints.append(checkpoint)
    return checkpoints


def _last_checkpoint_in(handle: BinaryIO) -> AuditCheckpoint | None:
    """The newest checkpoint at the end of an open checkpoint file (its last lines only)."""
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - 8192))
    for text in reversed(handle.read().decode("utf-8", "replace").splitlines()):
        try:
            checkpoint = _checkpoint_parse(text, "tail")
        except CheckpointError:
            continue
        if checkpoint is not None:
            return checkpoint
    return None


def audit_checkpoint_write(*, path: str | Path | None = None, force: bool = False) -> AuditCheckpoint | None:
    """Append a signed checkpoint of the chain head to the checkpoint file and the log.

    Writes nothing when the trail is empty, when the head does not verify (a checkpoint
    must never vouch for a head someone altered), or, unless ``force``, when the newest
    checkpoint in the file already covers the head. Returns the checkpoint written.
    Not an audit event itself: it would move the head it records.
    """
    path = Path(path or settings.AUDIT_CHECKPOINT_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a+b") as handle:
        # Race prevented: two workers checkpointing at once would interleave lines or write
        # them out of order; the lock makes read-head-then-append one step per file.
        fcntl.flock(handle, fcntl.LOCK_EX)
        head = AuditChainHead.objects.filter(pk=1).first()
        if head is None or head.last_event_id is None:
            return None
        problem = head_problem(head)
        if problem:
            log.error("audit: not writing a checkpoint: %s", problem)
            return None
        newest = _last_checkpoint_in(handle)
        if not force and newest is not None and newest.event_id >= head.last_event_id:
            return None
        key_id, _key = audit_keys.signing_key()
        at = timezone.now().astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        checkpoint = AuditCheckpoint(event_id=head.last_event_id, hash=head.last_hash, at=at, key_id=key_id, mac="")
        checkpoint = dataclasses.replace(checkpoint, mac=audit_keys.mac(key_id, checkpoint.message()))
        handle.write((checkpoint.line() + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())
    # The same line in the log: shipped off the host, it is a second copy the host cannot rewrite.
    log.info("%s%s", CHECKPOINT_MARKER, checkpoint.line())
    return checkpoint
