"""Writes of the ``portal`` app: the audit trail, organisations, staff and API keys."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils import timezone

from portal.models import ApiKey, AuditChainHead, AuditEvent, Organisation, User

GENESIS_HASH = "0" * 64


def actor_label(actor) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, User):
        return actor.get_username()
    return str(actor)


#: Every field list ``snapshot`` has used in this process, by (model label, requested fields):
#: the resolved fields. A cache, and the record the test suite checks for secrets.
AUDITED_FIELD_LISTS: dict[tuple[str, tuple[str, ...] | None], tuple[models.Field, ...]] = {}


def audited_fields(model: type[models.Model], fields: Iterable[str] | None = None) -> tuple[models.Field, ...]:
    """The fields of ``model`` that may enter the audit trail: an explicit allow-list, never a guess.

    A model declares its list as ``audit_fields`` (names of concrete or many-to-many fields; a
    secret — a password hash, a credential digest, an offline-code secret, a webhook secret —
    is simply never listed). ``fields`` narrows it for one event; for a model that declares
    no list, ``fields`` *is* the allow-list. Neither: ``ImproperlyConfigured`` (fail loudly).
    """
    requested = tuple(fields) if fields is not None else None
    key = (model._meta.label, requested)
    cached = AUDITED_FIELD_LISTS.get(key)
    if cached is not None:
        return cached
    declared = getattr(model, "audit_fields", None)
    if declared is None and requested is None:
        raise ImproperlyConfigured(
            f"{model._meta.label} declares no audit_fields: list the fields that may enter the audit trail "
            f"(never a secret) on the model, or pass fields= to snapshot()"
        )
    if declared is not None and requested is not None and not set(requested) <= set(declared):
        extra = sorted(set(requested) - set(declared))
        raise ImproperlyConfigured(f"{model._meta.label}.audit_fields does not allow {', '.join(extra)}")
    names = requested if requested is not None else tuple(declared)
    try:
        resolved = tuple(model._meta.get_field(name) for name in names)
    except Exception as exc:  # FieldDoesNotExist: a typo must not silently drop a field
        raise ImproperlyConfigured(f"{model._meta.label}: {exc}") from None
    AUDITED_FIELD_LISTS[key] = resolved
    return resolved


def snapshot(obj: models.Model, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """A JSON-safe dict of the object's audited fields (``audited_fields``): foreign keys as ids,
    many-to-many fields as a sorted list of ids (read from the database, so snapshot after saving them)."""
    data = {}
    for field in audited_fields(type(obj), fields):
        if field.many_to_many:
            data[field.name] = sorted(getattr(obj, field.name).values_list("pk", flat=True)) if obj.pk else []
        else:
            data[field.attname] = getattr(obj, field.attname)
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


def api_key_create(
    *, provider: Organisation, name: str, actor=None, ip_address: str | None = None
) -> tuple[ApiKey, str]:
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
        audit_record(actor=actor, action="api_key.create", obj=key, after=snapshot(key), ip_address=ip_address)
    return key, full


def api_key_revoke(*, key: ApiKey, actor=None, ip_address: str | None = None) -> ApiKey:
    """Revoke a key at once; requests with it get 401 from now on."""
    with transaction.atomic():
        updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        key.refresh_from_db()
        if updated:
            audit_record(
                actor=actor,
                action="api_key.revoke",
                obj=key,
                after={"revoked_at": key.revoked_at},
                ip_address=ip_address,
            )
    return key


# --- a provider admin's settings: API key rotation, staff and roles -----------------------------


def api_key_rotate(*, key: ApiKey, actor, ip_address: str | None = None) -> tuple[ApiKey, str]:
    """Replace ``key`` by a fresh key of the same name; returns the new row and its full key (shown once).

    ``ApiKey`` has no grace period, so the old key is revoked in the same transaction:
    from the commit on, only the new key authenticates. A revoked key cannot be rotated.
    Audited as ``api_key.create`` and ``api_key.revoke`` (by the existing services) and
    ``api_key.rotate`` linking the two prefixes.
    """
    from django.core.exceptions import ValidationError

    with transaction.atomic():
        old = ApiKey.objects.select_for_update().select_related("provider").get(pk=key.pk)
        if old.revoked_at is not None:
            raise ValidationError("This key is revoked; create a new key instead.")
        new, full = api_key_create(provider=old.provider, name=old.name, actor=actor)
        api_key_revoke(key=old, actor=actor)
        audit_record(
            actor=actor,
            action="api_key.rotate",
            obj=new,
            before={"prefix": old.prefix},
            after={"prefix": new.prefix},
            ip_address=ip_address,
        )
    key.refresh_from_db()
    return new, full


#: What the staff pages record about a user (never the password hash).
STAFF_AUDIT_FIELDS = ("username", "first_name", "last_name", "email", "role", "is_active", "organisation")


def staff_roles_for(organisation: Organisation) -> list[tuple[str, str]]:
    """The roles an organisation's admin may give its staff, as (value, label) choices."""
    from portal.models import ROLES_BY_KIND, OrganisationKind, Role

    allowed = ROLES_BY_KIND[OrganisationKind(organisation.kind)]
    return [(value, label) for value, label in Role.choices if value in allowed]


def _staff_check_actor(*, actor, organisation: Organisation) -> None:
    from django.core.exceptions import ValidationError

    if not isinstance(actor, User) or actor.organisation_id != organisation.pk:
        raise ValidationError("Only a member of this organisation may manage its staff.")


def _staff_check_role(*, organisation: Organisation, role: str) -> None:
    from django.core.exceptions import ValidationError

    allowed = dict(staff_roles_for(organisation))
    if role not in allowed:
        raise ValidationError({"role": [f"Choose one of: {', '.join(str(label) for label in allowed.values())}."]})


def _active_admin_ids(organisation: Organisation) -> set[int]:
    """Active provider admins of ``organisation``, read under a lock of the organisation row.

    Race prevented: two admins demoting or deactivating each other at once would both see
    "another admin is left"; locking the organisation row serialises those changes.
    """
    from portal.models import Role

    Organisation.objects.select_for_update().filter(pk=organisation.pk).first()
    return set(
        User.objects.filter(organisation=organisation, role=Role.PROVIDER_ADMIN, is_active=True).values_list(
            "pk", flat=True
        )
    )


def staff_password_link_token(user: User) -> tuple[str, str]:
    """(uidb64, token) for a set-password link: valid once, until the password is set or it expires."""
    from django.contrib.auth.tokens import default_token_generator
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    return urlsafe_base64_encode(force_bytes(user.pk)), default_token_generator.make_token(user)


def staff_create(
    *,
    organisation: Organisation,
    username: str,
    role: str,
    actor,
    email: str = "",
    first_name: str = "",
    last_name: str = "",
    ip_address: str | None = None,
) -> tuple[User, tuple[str, str]]:
    """Create a staff user of the actor's own organisation with a role; audited as ``staff.create``.

    The user has no usable password: returns the user and ``(uidb64, token)`` of a one-time
    set-password link for the admin to hand over (finlock never knows their password). A
    provider admin may create agents, finance officers, auditors and provider admins of
    their own provider only; a username is unique regardless of case.
    """
    from django.core.exceptions import ValidationError

    _staff_check_actor(actor=actor, organisation=organisation)
    _staff_check_role(organisation=organisation, role=role)
    username = (username or "").strip()
    with transaction.atomic():
        if User.objects.filter(username__iexact=username).exists():
            raise ValidationError({"username": ["That username is taken; choose another."]})
        user = User(
            organisation=organisation,
            role=role,
            username=username,
            email=(email or "").strip(),
            first_name=(first_name or "").strip(),
            last_name=(last_name or "").strip(),
        )
        user.set_unusable_password()
        user.full_clean()
        user.save()
        audit_record(
            actor=actor,
            action="staff.create",
            obj=user,
            organisation=organisation,
            after=snapshot(user, STAFF_AUDIT_FIELDS),
            ip_address=ip_address,
        )
    return user, staff_password_link_token(user)


def staff_role_change(*, user: User, role: str, actor, ip_address: str | None = None) -> User:
    """Give a staff member another role of their organisation; audited as ``staff.role_change``.

    Refused for one's own account (another admin must do it) and when it would leave the
    organisation without an active provider admin.
    """
    from django.core.exceptions import ValidationError

    from portal.models import Role

    organisation = user.organisation
    _staff_check_actor(actor=actor, organisation=organisation)
    _staff_check_role(organisation=organisation, role=role)
    if user.pk == actor.pk:
        raise ValidationError({"role": ["You cannot change your own role; ask another admin."]})
    with transaction.atomic():
        admins = _active_admin_ids(organisation)
        user = User.objects.select_for_update().get(pk=user.pk)
        if user.role == role:
            return user
        if user.role == Role.PROVIDER_ADMIN and admins == {user.pk}:
            raise ValidationError({"role": ["This is the last active admin; make someone else admin first."]})
        before = snapshot(user, STAFF_AUDIT_FIELDS)
        user.role = role
        user.full_clean()
        user.save(update_fields=["role"])
        audit_record(
            actor=actor,
            action="staff.role_change",
            obj=user,
            organisation=organisation,
            before=before,
            after=snapshot(user, STAFF_AUDIT_FIELDS),
            ip_address=ip_address,
        )
    return user


def staff_set_active(*, user: User, active: bool, actor, ip_address: str | None = None) -> User:
    """Deactivate (or reactivate) a staff member; audited as ``staff.deactivate`` / ``staff.activate``.

    A deactivated user cannot sign in and their open sessions stop working at their next
    request. Nobody deactivates themselves, and the last active admin stays.
    """
    from django.core.exceptions import ValidationError

    from portal.models import Role

    organisation = user.organisation
    _staff_check_actor(actor=actor, organisation=organisation)
    if not active and user.pk == actor.pk:
        raise ValidationError("You cannot deactivate yourself; ask another admin.")
    with transaction.atomic():
        admins = _active_admin_ids(organisation)
        user = User.objects.select_for_update().get(pk=user.pk)
        if user.is_active == active:
            return user
        if not active and user.role == Role.PROVIDER_ADMIN and admins == {user.pk}:
            raise ValidationError("This is the last active admin; make someone else admin first.")
        before = snapshot(user, STAFF_AUDIT_FIELDS)
        user.is_active = active
        user.save(update_fields=["is_active"])
        audit_record(
            actor=actor,
            action="staff.activate" if active else "staff.deactivate",
            obj=user,
            organisation=organisation,
            before=before,
            after=snapshot(user, STAFF_AUDIT_FIELDS),
            ip_address=ip_address,
        )
    return user


def staff_password_link(*, user: User, actor, ip_address: str | None = None) -> tuple[str, str]:
    """A fresh one-time set-password link for a staff member (lost password, or the first one expired).

    The current password keeps working until the link is used. Audited as ``staff.password_link``
    (the token itself never enters the trail). Not for one's own account.
    """
    from django.core.exceptions import ValidationError

    _staff_check_actor(actor=actor, organisation=user.organisation)
    if user.pk == actor.pk:
        raise ValidationError("Not for your own account; ask another admin.")
    if not user.is_active:
        raise ValidationError("Reactivate this user first.")
    with transaction.atomic():
        audit_record(
            actor=actor, action="staff.password_link", obj=user, organisation=user.organisation, ip_address=ip_address
        )
    return staff_password_link_token(user)


def staff_password_set(*, user: User, password: str, ip_address: str | None = None) -> User:
    """The staff member sets their password through a set-password link; audited as ``staff.password_set``."""
    with transaction.atomic():
        user.set_password(password)
        user.save(update_fields=["password"])
        audit_record(
            actor=user, action="staff.password_set", obj=user, organisation=user.organisation, ip_address=ip_address
        )
    return user
