"""Providers' enrolment tokens: created, scoped and revoked by the provider's admins."""

from __future__ import annotations

import datetime as dt
import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from devices.models import (
    EnrollmentToken,
    max_length,
)
from devices.protocol import ENROLLMENT_TOKEN_PREFIX, secret_digest
from portal.audit import audit_record, audited_update, snapshot
from portal.models import Organisation, OrganisationKind, User
from portal.types import Actor


def _enrollment_token_check(*, name: str, shop: str, max_uses: object) -> tuple[str, str]:
    name = (name or "").strip()
    shop = (shop or "").strip()
    max_name = max_length(EnrollmentToken, "name")
    max_shop = max_length(EnrollmentToken, "shop")
    errors: dict[str, list[str]] = {}
    if not name or len(name) > max_name:
        errors["name"] = [f"Give the token a name of 1 to {max_name} characters."]
    if len(shop) > max_shop:
        errors["shop"] = [f"At most {max_shop} characters (this has {len(shop)})."]
    if max_uses is not None and (not isinstance(max_uses, int) or isinstance(max_uses, bool) or max_uses < 1):
        errors["max_uses"] = ["A whole number of phones, at least 1 (or empty for no limit)."]
    if errors:
        raise ValidationError(errors)
    return name, shop


ENROLLMENT_TOKEN_AUDIT_FIELDS = ("name", "shop", "provider", "expires_at", "max_uses", "revoked_at", "created_by")


def enrollment_token_create(
    *,
    provider: Organisation,
    name: str,
    actor: Actor,
    expires_at: dt.datetime | None = None,
    shop: str = "",
    max_uses: int | None = None,
    ip_address: str | None = None,
) -> tuple[EnrollmentToken, str]:
    """Create a provider's enrolment token; returns the row and the secret (shown once, only its digest is kept).

    ``shop`` labels where it is used (recorded with each enrolment), ``max_uses`` caps the
    phones it may enrol for the first time, ``expires_at`` ends it. Audited.
    """
    if provider.kind != OrganisationKind.PROVIDER:
        raise ValidationError({"provider": ["Only a financing provider enrols devices."]})
    name, shop = _enrollment_token_check(name=name, shop=shop, max_uses=max_uses)
    secret = ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = EnrollmentToken.objects.create(
            provider=provider,
            name=name,
            shop=shop,
            digest=secret_digest(secret),
            created_by=actor if isinstance(actor, User) else None,
            expires_at=expires_at,
            max_uses=max_uses,
        )
        audit_record(
            actor=actor,
            action="enrollment_token.create",
            obj=token,
            after=snapshot(token, ENROLLMENT_TOKEN_AUDIT_FIELDS),
            ip_address=ip_address,
        )
    return token, secret


def enrollment_token_revoke(*, token: EnrollmentToken, actor: Actor, ip_address: str | None = None) -> EnrollmentToken:
    """Revoke a token at once: no enrolment with it succeeds from now on. Audited; revoking twice changes nothing."""
    with transaction.atomic():
        # Race: an enrolment counting a use at this moment is ordered by the row lock; the
        # enrolment's conditional UPDATE refuses a revoked token.
        locked = EnrollmentToken.objects.select_for_update().get(pk=token.pk)
        if locked.revoked_at is not None:
            return locked
        audited_update(
            locked,
            actor=actor,
            action="enrollment_token.revoke",
            changes={"revoked_at": timezone.now()},
            fields=ENROLLMENT_TOKEN_AUDIT_FIELDS,
            ip_address=ip_address,
            clean=False,
        )
    return locked
