"""The one permission layer: tenant scope and role rights.

Used by the staff portal and the REST API alike.

* **Tenant scope** decides which providers' objects an actor can see at all.
  An object outside it does not exist for that actor: 404, never 403.
* **Rights** decide what an actor may do inside its scope. Lacking a right is
  403 (``PermissionDenied``).

An *actor* is a staff ``User`` or an ``ApiClient`` (a provider's API key);
both expose ``organisation`` and ``role``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from django.core.exceptions import MultipleObjectsReturned, ObjectDoesNotExist, PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404

from portal.models import ApiKey, Organisation, OrganisationKind, Role

M = TypeVar("M", bound=Model)


class Right(StrEnum):
    VIEW_DEVICES = "view_devices"  # device registry and lock state, who to contact
    VIEW_FINANCE = "view_finance"  # customers, contracts, schedules, payments
    MANAGE_DEVICES = "manage_devices"
    MANAGE_CONTRACTS = "manage_contracts"
    RECORD_PAYMENTS = "record_payments"
    VERIFY_PAYMENTS = "verify_payments"
    IMPORT_STATEMENTS = "import_statements"
    MANAGE_CASES = "manage_cases"
    REQUEST_UNLOCK = "request_unlock"
    APPROVE_UNLOCK = "approve_unlock"
    UPLOAD_PROOF = "upload_proof"
    MANAGE_SETTINGS = "manage_settings"  # policy, lock-screen text, staff, API keys
    MANAGE_ORGANISATIONS = "manage_organisations"
    VIEW_AUDIT = "view_audit"


API_CLIENT_ROLE = "api_client"

ROLE_RIGHTS: dict[str, frozenset[Right]] = {
    Role.PROVIDER_ADMIN: frozenset(
        {
            Right.VIEW_DEVICES,
            Right.VIEW_FINANCE,
            Right.MANAGE_DEVICES,
            Right.MANAGE_CONTRACTS,
            Right.MANAGE_SETTINGS,
            Right.MANAGE_CASES,
            Right.REQUEST_UNLOCK,
            Right.APPROVE_UNLOCK,
            Right.VIEW_AUDIT,
        }
    ),
    Role.AGENT: frozenset(
        {
            Right.VIEW_DEVICES,
            Right.VIEW_FINANCE,
            Right.VERIFY_PAYMENTS,
            Right.RECORD_PAYMENTS,
            Right.MANAGE_CASES,
            Right.REQUEST_UNLOCK,
            Right.APPROVE_UNLOCK,
        }
    ),
    Role.FINANCE: frozenset(
        {Right.VIEW_DEVICES, Right.VIEW_FINANCE, Right.RECORD_PAYMENTS, Right.VERIFY_PAYMENTS, Right.IMPORT_STATEMENTS}
    ),
    # A technician sees lock state and whom to contact, never an owner's finances.
    Role.TECHNICIAN: frozenset({Right.VIEW_DEVICES, Right.UPLOAD_PROOF, Right.REQUEST_UNLOCK}),
    Role.OPERATOR: frozenset({Right.VIEW_DEVICES, Right.MANAGE_ORGANISATIONS, Right.VIEW_AUDIT}),
    Role.AUDITOR: frozenset({Right.VIEW_DEVICES, Right.VIEW_FINANCE, Right.VIEW_AUDIT}),
    API_CLIENT_ROLE: frozenset(
        {
            Right.VIEW_DEVICES,
            Right.VIEW_FINANCE,
            Right.MANAGE_DEVICES,
            Right.MANAGE_CONTRACTS,
            Right.RECORD_PAYMENTS,
            Right.IMPORT_STATEMENTS,  # a provider's finance system uploads its bank statements
        }
    ),
}


@dataclass(frozen=True)
class ApiClient:
    """The actor behind a provider's API key (``request.user`` in the API)."""

    key: ApiKey

    role = API_CLIENT_ROLE
    is_authenticated = True
    is_active = True
    is_anonymous = False

    @property
    def organisation(self) -> Organisation:
        return self.key.provider

    @property
    def organisation_id(self) -> int:
        return self.key.provider_id

    @property
    def pk(self):  # the audit trail links staff users only
        return None

    def __str__(self) -> str:
        return f"api-key:{self.key.prefix}"


#: Rights that show or change money or an owner's identity: amounts, payments, statements,
#: contracts, customers' names, phone numbers and national ids (a case shows them once the caller
#: is verified). Nobody in a service centre holds one, whatever their role.
MONEY_AND_IDENTITY_RIGHTS = frozenset(
    {
        Right.VIEW_FINANCE,
        Right.RECORD_PAYMENTS,
        Right.VERIFY_PAYMENTS,
        Right.IMPORT_STATEMENTS,
        Right.MANAGE_CONTRACTS,
        Right.MANAGE_CASES,
    }
)


def rights_of(actor) -> frozenset[Right]:
    """Every right the actor holds: its role's, less money and identity in a service centre.

    The one place rights are computed. A service centre's staff (technicians, and its
    auditors) work on phones, never on owners' finances or identities.
    """
    if actor is None or not getattr(actor, "is_authenticated", False) or not getattr(actor, "is_active", False):
        return frozenset()
    rights = ROLE_RIGHTS.get(actor.role, frozenset())
    if rights & MONEY_AND_IDENTITY_RIGHTS and actor.organisation.kind == OrganisationKind.SERVICE_CENTER:
        rights = rights - MONEY_AND_IDENTITY_RIGHTS
    return rights


def has_right(actor, right: Right) -> bool:
    return right in rights_of(actor)


def require(actor, right: Right) -> None:
    """Raise 403 unless the actor holds ``right``."""
    if not has_right(actor, right):
        raise PermissionDenied(f"Your role does not allow this ({right.value}).")


def visible_provider_ids(actor) -> set[int] | None:
    """Providers whose objects the actor may see; ``None`` means every provider."""
    if actor is None or not getattr(actor, "is_authenticated", False):
        return set()
    org = actor.organisation
    if org.kind == OrganisationKind.PLATFORM:
        return None
    if org.kind == OrganisationKind.SERVICE_CENTER:
        return set(org.served_providers.values_list("id", flat=True))
    return {org.id}


def scope(qs: QuerySet[M], actor, *, provider_field: str = "provider") -> QuerySet[M]:
    """Restrict ``qs`` to the actor's tenant scope."""
    ids = visible_provider_ids(actor)
    if ids is None:
        return qs
    return qs.filter(**{f"{provider_field}__in": ids})


def scoped_list(qs: QuerySet[M], actor, right: Right, *, provider_field: str = "provider") -> QuerySet[M]:
    """A list the actor may read: 403 without ``right``, else scoped."""
    require(actor, right)
    return scope(qs, actor, provider_field=provider_field)


def scoped_get(qs: QuerySet[M], actor, right: Right, *, provider_field: str = "provider", **lookup) -> M:
    """One object: 404 outside the tenant scope, then 403 without ``right``."""
    try:
        obj = scope(qs, actor, provider_field=provider_field).get(**lookup)
    except (ObjectDoesNotExist, ValueError, TypeError):
        raise Http404("No such object.") from None
    except MultipleObjectsReturned:
        raise Http404("Ambiguous lookup.") from None
    require(actor, right)
    return obj
