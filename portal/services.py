"""Writes of the ``portal`` app: organisations, staff and API keys (the audit trail is ``portal.audit``)."""

from __future__ import annotations

from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from portal.audit import audit_record, audited_update, snapshot
from portal.models import ROLES_BY_KIND, ApiKey, Organisation, OrganisationKind, Role, User
from portal.types import Actor


def api_key_create(
    *, provider: Organisation, name: str, actor: Actor = None, ip_address: str | None = None
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


def api_key_revoke(*, key: ApiKey, actor: Actor = None, ip_address: str | None = None) -> ApiKey:
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


def api_key_rotate(*, key: ApiKey, actor: Actor, ip_address: str | None = None) -> tuple[ApiKey, str]:
    """Replace ``key`` by a fresh key of the same name; returns the new row and its full key (shown once).

    ``ApiKey`` has no grace period, so the old key is revoked in the same transaction:
    from the commit on, only the new key authenticates. A revoked key cannot be rotated.
    Audited as ``api_key.create`` and ``api_key.revoke`` (by the existing services) and
    ``api_key.rotate`` linking the two prefixes.
    """
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
    allowed = ROLES_BY_KIND[OrganisationKind(organisation.kind)]
    return [(value, str(label)) for value, label in Role.choices if value in allowed]


def _staff_check_actor(*, actor: Actor, organisation: Organisation) -> User:
    """``actor`` as the member of ``organisation`` who manages its staff; ``ValidationError`` for anyone else."""
    if not isinstance(actor, User) or actor.organisation_id != organisation.pk:
        raise ValidationError("Only a member of this organisation may manage its staff.")
    return actor


def _staff_check_role(*, organisation: Organisation, role: str) -> None:
    allowed = dict(staff_roles_for(organisation))
    if role not in allowed:
        raise ValidationError({"role": [f"Choose one of: {', '.join(str(label) for label in allowed.values())}."]})


def _active_admin_ids(organisation: Organisation) -> set[int]:
    """Active provider admins of ``organisation``, read under a lock of the organisation row.

    Race prevented: two admins demoting or deactivating each other at once would both see
    "another admin is left"; locking the organisation row serialises those changes.
    """
    Organisation.objects.select_for_update().filter(pk=organisation.pk).first()
    return set(
        User.objects.filter(organisation=organisation, role=Role.PROVIDER_ADMIN, is_active=True).values_list(
            "pk", flat=True
        )
    )


def staff_password_link_token(user: User) -> tuple[str, str]:
    """(uidb64, token) for a set-password link: valid once, until the password is set or it expires."""
    return urlsafe_base64_encode(force_bytes(user.pk)), default_token_generator.make_token(user)


def staff_create(
    *,
    organisation: Organisation,
    username: str,
    role: str,
    actor: Actor,
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


def staff_role_change(*, user: User, role: str, actor: Actor, ip_address: str | None = None) -> User:
    """Give a staff member another role of their organisation; audited as ``staff.role_change``.

    Refused for one's own account (another admin must do it) and when it would leave the
    organisation without an active provider admin.
    """
    organisation = user.organisation
    admin = _staff_check_actor(actor=actor, organisation=organisation)
    _staff_check_role(organisation=organisation, role=role)
    if user.pk == admin.pk:
        raise ValidationError({"role": ["You cannot change your own role; ask another admin."]})
    with transaction.atomic():
        admins = _active_admin_ids(organisation)
        user = User.objects.select_for_update().get(pk=user.pk)
        if user.role == role:
            return user
        if user.role == Role.PROVIDER_ADMIN and admins == {user.pk}:
            raise ValidationError({"role": ["This is the last active admin; make someone else admin first."]})
        audited_update(
            user,
            actor=actor,
            action="staff.role_change",
            changes={"role": role},
            fields=STAFF_AUDIT_FIELDS,
            organisation=organisation,
            ip_address=ip_address,
        )
    return user


def staff_set_active(*, user: User, active: bool, actor: Actor, ip_address: str | None = None) -> User:
    """Deactivate (or reactivate) a staff member; audited as ``staff.deactivate`` / ``staff.activate``.

    A deactivated user cannot sign in and their open sessions stop working at their next
    request. Nobody deactivates themselves, and the last active admin stays.
    """
    organisation = user.organisation
    admin = _staff_check_actor(actor=actor, organisation=organisation)
    if not active and user.pk == admin.pk:
        raise ValidationError("You cannot deactivate yourself; ask another admin.")
    with transaction.atomic():
        admins = _active_admin_ids(organisation)
        user = User.objects.select_for_update().get(pk=user.pk)
        if user.is_active == active:
            return user
        if not active and user.role == Role.PROVIDER_ADMIN and admins == {user.pk}:
            raise ValidationError("This is the last active admin; make someone else admin first.")
        audited_update(
            user,
            actor=actor,
            action="staff.activate" if active else "staff.deactivate",
            changes={"is_active": active},
            fields=STAFF_AUDIT_FIELDS,
            organisation=organisation,
            ip_address=ip_address,
            clean=False,
        )
    return user


def staff_password_link(*, user: User, actor: Actor, ip_address: str | None = None) -> tuple[str, str]:
    """A fresh one-time set-password link for a staff member (lost password, or the first one expired).

    The current password keeps working until the link is used. Audited as ``staff.password_link``
    (the token itself never enters the trail). Not for one's own account.
    """
    admin = _staff_check_actor(actor=actor, organisation=user.organisation)
    if user.pk == admin.pk:
        raise ValidationError("Not for your own account; ask another admin.")
    if not user.is_active:
        raise ValidationError("Reactivate this user first.")
    with transaction.atomic():
        audit_record(
            actor=actor, action="staff.password_link", obj=user, organisation=user.organisation, ip_address=ip_address
        )
    return staff_password_link_token(user)


def staff_password_set(*, user: User, password: str, actor: User | None = None, ip_address: str | None = None) -> User:
    """A password chosen through ``user``'s set-password link; audited as ``staff.password_set``.

    ``actor`` is whoever was signed in when the link was used, if that is someone other than
    ``user``: they chose the password, so four eyes links the two accounts
    (``portal.four_eyes.SETUP_ACTIONS``). Otherwise the staff member set their own.
    """
    with transaction.atomic():
        user.set_password(password)
        user.save(update_fields=["password"])
        audit_record(
            actor=actor or user,
            action="staff.password_set",
            obj=user,
            organisation=user.organisation,
            ip_address=ip_address,
        )
    return user
