"""Writes of the ``portal`` app: the audit trail, organisations, staff and API keys."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils import timezone

from portal.models import ApiKey, AuditChainHead, AuditEvent, Organisation, User

GENESIS_HASH = "0" * 64

# Field names whose values never enter the audit trail in clear.
REDACTED_FIELDS = {"password", "digest", "national_id_digest", "key", "secret"}


def actor_label(actor) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, User):
        return actor.get_username()
    return str(actor)


def snapshot(obj: models.Model, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """A JSON-safe dict of an object's concrete fields (foreign keys as ids)."""
    data = {}
    for field in obj._meta.concrete_fields:
        if fields is not None and field.name not in fields:
            continue
        if field.name in REDACTED_FIELDS:
            continue
        value = getattr(obj, field.attname)
        data[field.attname] = value
    return _json_safe(data)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder, default=str))


def event_hash(event: AuditEvent) -> str:
    """SHA-256 over the canonical JSON of the event's content and ``prev_hash``."""
    content = {
        "created_at": event.created_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "organisation_id": event.organisation_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "ip_address": event.ip_address,
        "before": event.before,
        "after": event.after,
        "prev_hash": event.prev_hash,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """What to record; ``audit_record_many`` chains and stores a batch of these."""

    action: str
    obj: models.Model | None = None
    organisation: Organisation | None = None
    before: dict | None = None
    after: dict | None = None
    object_type: str = ""
    object_id: str = ""
    object_repr: str = ""


def _organisation_of(obj) -> int | None:
    if obj is None:
        return None
    if isinstance(obj, Organisation):
        return obj.pk
    for attr in ("provider_id", "organisation_id"):
        if getattr(obj, attr, None):
            return getattr(obj, attr)
    return None


def audit_record_many(*, actor, entries: list[AuditEntry], ip_address: str | None = None) -> list[AuditEvent]:
    """Append a batch of events to the chain in one transaction.

    Race prevented: two writers appending at once would both read the same
    head and fork the chain; locking the single head row serialises appends.
    """
    if not entries:
        return []
    now = timezone.now()
    label = actor_label(actor)
    # Store the address in the form the database returns it, so the hash verifies.
    ip_address = AuditEvent._meta.get_field("ip_address").get_prep_value(ip_address) or None
    actor_id = actor.pk if isinstance(actor, User) else None
    with transaction.atomic():
        head = AuditChainHead.objects.select_for_update().filter(pk=1).first()
        if head is None:
            AuditChainHead.objects.get_or_create(pk=1, defaults={"last_hash": GENESIS_HASH})
            head = AuditChainHead.objects.select_for_update().get(pk=1)
        prev = head.last_hash
        events = []
        for entry in entries:
            obj = entry.obj
            org_id = entry.organisation.pk if entry.organisation else _organisation_of(obj)
            event = AuditEvent(
                created_at=now,
                actor_id=actor_id,
                actor_label=label,
                organisation_id=org_id,
                action=entry.action,
                object_type=entry.object_type or (obj._meta.label if obj is not None else ""),
                object_id=entry.object_id or (str(obj.pk) if obj is not None else ""),
                object_repr=(entry.object_repr or (str(obj) if obj is not None else ""))[:200],
                ip_address=ip_address,
                before=_json_safe(entry.before) if entry.before is not None else None,
                after=_json_safe(entry.after) if entry.after is not None else None,
                prev_hash=prev,
            )
            event.hash = event_hash(event)
            prev = event.hash
            events.append(event)
        AuditEvent.objects.bulk_create(events, batch_size=2000)
        last_id = AuditEvent.objects.filter(hash=prev).values_list("id", flat=True).first()
        AuditChainHead.objects.filter(pk=1).update(last_hash=prev, last_event_id=last_id)
    return events


def audit_record(
    *,
    actor,
    action: str,
    obj: models.Model | None = None,
    organisation: Organisation | None = None,
    before: dict | None = None,
    after: dict | None = None,
    ip_address: str | None = None,
    object_repr: str = "",
) -> AuditEvent:
    """Append one event to the audit trail (inside the caller's transaction)."""
    entry = AuditEntry(
        action=action, obj=obj, organisation=organisation, before=before, after=after, object_repr=object_repr
    )
    return audit_record_many(actor=actor, entries=[entry], ip_address=ip_address)[0]


@dataclass(frozen=True)
class ChainReport:
    checked: int
    first_broken_id: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.first_broken_id is None


def audit_verify_chain(*, batch_size: int = 5000) -> ChainReport:
    """Walk the whole trail in id order and report the first event that breaks the chain."""
    prev = GENESIS_HASH
    checked = 0
    last_id = 0
    while True:
        batch = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id")[:batch_size])
        if not batch:
            break
        for event in batch:
            if event.prev_hash != prev:
                return ChainReport(
                    checked,
                    event.id,
                    "its prev_hash does not match the previous event's hash "
                    "(an event before it was removed or altered)",
                )
            if event_hash(event) != event.hash:
                return ChainReport(checked, event.id, "its content does not match its hash (the row was altered)")
            prev = event.hash
            checked += 1
            last_id = event.id
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and checked and head.last_hash != prev:
        return ChainReport(checked, head.last_event_id or last_id, "the newest events were removed")
    return ChainReport(checked, None)


def api_key_create(*, provider: Organisation, name: str, actor=None) -> tuple[ApiKey, str]:
    """Create an API key for ``provider``; returns the row and the full key (shown once)."""
    full, prefix, digest = ApiKey.generate()
    with transaction.atomic():
        key = ApiKey.objects.create(
            provider=provider,
            name=name,
            prefix=prefix,
            digest=digest,
            created_by=actor if isinstance(actor, User) else None,
        )
        audit_record(actor=actor, action="api_key.create", obj=key, after=snapshot(key))
    return key, full


def api_key_revoke(*, key: ApiKey, actor=None) -> ApiKey:
    """Revoke a key at once; requests with it get 401 from now on."""
    with transaction.atomic():
        updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        key.refresh_from_db()
        if updated:
            audit_record(actor=actor, action="api_key.revoke", obj=key, after={"revoked_at": key.revoked_at})
    return key
