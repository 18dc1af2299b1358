"""The call-center agent console: one search box and one page per device.

An agent has a customer on the line. The search box takes whatever the customer reads
out — an IMEI (or the second IMEI) with spaces or dashes, a phone number in any local or
international form, a contract number however it was typed, or a name — and lands on the
device's console page: lock state (desired vs reported), the contract and its schedule,
payments with how they were matched, the command history and the audit timeline, with
links to act (verify a payment, open a case, request an unlock).

Rules:

* The console shows finances, so it needs ``Right.VIEW_FINANCE``: a service-center
  technician gets 403 on every console URL (the device registry is their page).
* Everything is scoped to the providers the user sees; another provider's device is 404.
* Every page runs a fixed number of queries, whatever the size of the data: each lookup
  path is one indexed query, histories are cut (last ``COMMAND_LIMIT`` commands,
  ``PAYMENT_LIMIT`` payments, ``AUDIT_LIMIT`` audit events), related rows come with
  ``select_related``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Case, IntegerField, Q, Value, When
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone

from devices.delivery import delivery_status
from devices.models import Device, DeviceCommand, LockState, normalise_imei
from payments.contracts.selectors import contract_position
from payments.contracts.services import parse_phone
from payments.models import Contract, ContractStatus, Payment, PaymentStatus, contract_number_key
from portal.models import AuditEvent, Organisation
from portal.permissions import Right, has_right, require, scoped_get, scoped_list, visible_provider_ids
from support.selectors import open_cases_for_device

#: The console shows an owner's finances: whoever lacks this right gets 403 everywhere here.
CONSOLE_RIGHT = Right.VIEW_FINANCE
#: Hits listed per search (a name search stops at this many customers' contracts).
SEARCH_LIMIT = 20
#: What the device page shows of each history.
COMMAND_LIMIT = 20
PAYMENT_LIMIT = 50
AUDIT_LIMIT = 50
CONTRACT_LIMIT = 10
#: Unmatched payments sent from the customer's phone: the "I paid and it's still locked" hint.
UNMATCHED_LIMIT = 10
UNMATCHED_DAYS = 90

#: How a payment was matched (payments.ledger.matching.payment_find_match and friends), as an agent says it.
MATCH_RULES = {
    "contract_number": "contract number given",
    "reference_exact": "reference = contract number",
    "reference_normalised": "reference ≈ contract number",
    "imei": "IMEI in the reference",
    "payer_phone": "payer's phone",
    "manual": "matched by hand",
}

_SEPARATORS = re.compile(r"[\s\-./]+")
_PHONE_CHARS = re.compile(r"^[+\d\s\-().]+$")


# --- search ------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One device the query found, with the contract it was found through (if any) and how."""

    device: Device
    contract: Contract | None
    matched_by: str


@dataclass
class SearchOutcome:
    query: str
    hits: list[Hit] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)  # what the query was read as, in plain words
    truncated: bool = False


def _regions(actor) -> list[str]:
    """Countries a local phone number may be from: the user's provider's, else those of the providers it sees."""
    org = actor.organisation
    if org.country:
        return [org.country]
    ids = visible_provider_ids(actor)
    providers = Organisation.objects.filter(kind="provider").exclude(country="")
    if ids is not None:
        providers = providers.filter(pk__in=ids)
    return sorted(set(providers.values_list("country", flat=True)))


def _imei_of(raw: str) -> tuple[str | None, str | None]:
    """(IMEI, None) when ``raw`` is a valid IMEI; (None, why not) when it looks like one but is not."""
    compact = _SEPARATORS.sub("", raw)
    if not (compact.isdigit() and len(compact) == 15):
        return None, None
    try:
        return normalise_imei(compact), None
    except ValidationError as exc:
        return None, " ".join(exc.messages)


def _phones_of(raw: str, regions: list[str]) -> list[str]:
    """E.164 numbers ``raw`` may be, read with each region as the default country."""
    if not _PHONE_CHARS.match(raw) or sum(ch.isdigit() for ch in raw) < 7:
        return []
    found = []
    for region in regions:
        try:
            e164 = parse_phone(raw, region=region)
        except ValidationError:
            continue
        if e164 not in found:
            found.append(e164)
    return found


def console_search(actor, raw: str) -> SearchOutcome:
    """Read ``raw`` every way it can be read and look each reading up: one indexed query per reading.

    At most four queries (IMEI, phone, contract number, name), whatever the number of devices.
    """
    query = " ".join((raw or "").split())[:100]
    outcome = SearchOutcome(query=query)
    if not query:
        return outcome
    devices = scoped_list(Device.objects.all(), actor, CONSOLE_RIGHT)
    contracts = scoped_list(Contract.objects.select_related("device", "customer"), actor, CONSOLE_RIGHT)
    found: list[Hit] = []

    # 1. IMEI or second IMEI: Device.imei and Device.imei2 are both indexed (db_index).
    imei, imei_problem = _imei_of(query)
    if imei:
        outcome.tried.append(f"IMEI or second IMEI {imei}")
        for device in devices.filter(Q(imei=imei) | Q(imei2=imei)).order_by("-id")[: SEARCH_LIMIT + 1]:
            found.append(Hit(device, None, "IMEI" if device.imei == imei else "second IMEI"))
    elif imei_problem:
        outcome.tried.append(f"an IMEI, but {imei_problem[0].lower()}{imei_problem[1:]}")

    # 2. Contract number, as typed (unique per provider) or normalised (Contract.number_key, indexed):
    #    "dlg 131", "DLG/131" and "DLG-000131" all find DLG-000131.
    key = contract_number_key(query)
    if any(ch.isdigit() for ch in key) and len(key) <= 40 and not imei:
        outcome.tried.append(f"contract number {query}" + (f" (or {key})" if key != query else ""))
        rows = list(contracts.filter(Q(number=query) | Q(number_key=key)).order_by("-id")[: SEARCH_LIMIT + 1])
        exact = [c for c in rows if c.number == query]
        for contract in exact or rows:
            found.append(Hit(contract.device, contract, "contract number"))

    # 3. Phone number, stored E.164 on Customer.phone (indexed); local forms use the provider's country.
    phones = _phones_of(query, _regions(actor)) if not imei else []
    if phones:
        outcome.tried.append("phone number " + " or ".join(phones))
        for contract in contracts.filter(customer__phone__in=phones).order_by("-id")[: SEARCH_LIMIT + 1]:
            found.append(Hit(contract.device, contract, "customer phone"))

    # 4. Customer name, case-insensitive "contains", only for text without digits (names have none).
    #    On PostgreSQL this is UPPER(name) LIKE UPPER('%…%'), which no b-tree can serve (not even
    #    the (provider, name) index): PostgreSQL reads the customers table, ~90 ms at 200,000
    #    devices (bench/lookup.py), linear in the data. Hence digits never reach this reading, and
    #    the exact lookups above come first. A trigram index makes it an index lookup:
    #    GinIndex(OpClass(Upper("name"), name="gin_trgm_ops")) with the pg_trgm extension.
    if not any(ch.isdigit() for ch in query) and len(query) >= 2:
        outcome.tried.append(f"customer name containing “{query}”")
        named = contracts.filter(customer__name__icontains=query).order_by("customer__name", "-id")
        for contract in named[: SEARCH_LIMIT + 1]:
            found.append(Hit(contract.device, contract, "customer name"))

    # One hit per device, the most precise reading first.
    seen: set[int] = set()
    for hit in found:
        if hit.device.pk not in seen:
            seen.add(hit.device.pk)
            outcome.hits.append(hit)
    outcome.truncated = len(outcome.hits) > SEARCH_LIMIT
    outcome.hits = outcome.hits[:SEARCH_LIMIT]
    return outcome


def _with_contracts(hits: list[Hit]) -> None:
    """Give hits found by IMEI their current contract, for the result list (one query)."""
    bare = {hit.device.pk: hit for hit in hits if hit.contract is None}
    if not bare:
        return
    for contract in (
        Contract.objects.filter(device_id__in=list(bare)).select_related("customer").order_by(_active_first(), "-id")
    ):
        hit = bare[contract.device_id]
        if hit.contract is None:
            hit.contract = contract
            hit.contract.device = hit.device


def _active_first():
    return Case(When(status=ContractStatus.ACTIVE, then=Value(0)), default=Value(1), output_field=IntegerField())


@login_required
def search(request):
    """The console's one search box: one hit → its device page; several → a list; none → what was tried."""
    require(request.user, CONSOLE_RIGHT)
    outcome = console_search(request.user, request.GET.get("q", ""))
    if len(outcome.hits) == 1:
        return redirect(reverse("console:device", args=[outcome.hits[0].device.pk]))
    _with_contracts(outcome.hits)
    return render(
        request,
        "support/console_search.html",
        {"q": outcome.query, "outcome": outcome, "search_limit": SEARCH_LIMIT},
    )


# --- one device ---------------------------------------------------------------------------------


def _commands(device: Device) -> list[DeviceCommand]:
    """The newest commands (one query); their push-by-push log stays on the device record page."""
    commands = list(device.commands.order_by("-seq")[:COMMAND_LIMIT])
    for command in commands:
        command.status = delivery_status(command)  # type: ignore[attr-defined]  # a display value the page reads
    return commands


def _audit_events(device: Device, contracts: list[Contract], payments: list[Payment]) -> list[AuditEvent]:
    """The newest audit events of the device, its contracts and the payments shown (one query).

    Served by the (object_type, object_id) index: a bitmap OR of at most three index scans.
    The tenant is checked on the rows rather than in SQL, so the planner is never tempted to
    walk the provider's whole trail backwards through the (organisation, -id) index.
    """
    wanted = Q(object_type=Device._meta.label, object_id=str(device.pk))
    if contracts:
        wanted |= Q(object_type=Contract._meta.label, object_id__in=[str(c.pk) for c in contracts])
    if payments:
        wanted |= Q(object_type=Payment._meta.label, object_id__in=[str(p.pk) for p in payments])
    events = AuditEvent.objects.filter(wanted).order_by("-id")[:AUDIT_LIMIT]
    return [e for e in events if e.organisation_id in (None, device.provider_id)]


def _unmatched_from(contract: Contract | None) -> list[Payment]:
    """Recent unmatched payments sent from the customer's phone: often why a phone stays locked (one query).

    Walks the (provider, status, -received_at) index newest first over the last
    ``UNMATCHED_DAYS``: bounded by the provider's recent unmatched payments, not by all of them.
    """
    if contract is None or not contract.customer.phone:
        return []
    since = timezone.now() - dt.timedelta(days=UNMATCHED_DAYS)
    return list(
        Payment.objects.filter(
            provider_id=contract.provider_id,
            status=PaymentStatus.UNMATCHED,
            received_at__gte=since,
            payer_phone=str(contract.customer.phone),
        ).order_by("-received_at", "-id")[:UNMATCHED_LIMIT]
    )


@login_required
def device(request, pk: int):
    """Everything an agent needs about one device on one page, in a fixed number of queries."""
    user = request.user
    require(user, CONSOLE_RIGHT)
    device = scoped_get(Device.objects.select_related("provider"), user, CONSOLE_RIGHT, pk=pk)
    provider = device.provider
    today = provider.today()

    contracts = list(device.contracts.select_related("customer").order_by(_active_first(), "-id")[:CONTRACT_LIMIT])
    contract = contracts[0] if contracts else None
    rows, position = [], None
    if contract is not None:
        contract.device, contract.provider = device, provider
        installments = list(contract.installments.order_by("number"))
        position = contract_position(contract, today=today, installments=installments)
        rows = [{"installment": i, "status": i.status_on(today), "outstanding": i.outstanding} for i in installments]

    # By the contracts already read (the Payment.contract_id index): a device has a handful of
    # payments, its provider millions, so nothing here may let the planner start from the provider.
    # The tenant is checked on the rows (a contract's payments are its provider's).
    payments = [
        p
        for p in Payment.objects.filter(contract_id__in=[c.pk for c in contracts])
        .select_related("contract", "verified_by", "recorded_by")
        .order_by("-received_at", "-id")[:PAYMENT_LIMIT]
        if p.provider_id == provider.pk
    ]
    for payment in payments:
        label = MATCH_RULES.get(payment.match_rule, payment.match_rule.replace("_", " "))
        payment.match_label = label  # type: ignore[attr-defined]  # a display value the page reads
    commands = _commands(device)
    paid_still_locked = bool(
        position is not None
        and not position.arrears
        and device.desired_state in (LockState.UNLOCKED, LockState.RELEASED, LockState.TEMP_UNLOCKED)
        and device.reported_state == LockState.LOCKED
    )
    ctx = {
        "device": device,
        "provider": provider,
        "today": today,
        "contract": contract,
        "other_contracts": contracts[1:],
        "rows": rows,
        "position": position,
        "payments": payments,
        # Recorded from a receipt alone: part of the money held until someone else or the channel confirms it.
        "provisional": [p for p in payments if p.status == PaymentStatus.PROVISIONAL],
        "payment_limit": PAYMENT_LIMIT,
        "unmatched": _unmatched_from(contract),
        "commands": commands,
        "command_limit": COMMAND_LIMIT,
        "events": _audit_events(device, contracts, payments),
        "audit_limit": AUDIT_LIMIT,
        "open_cases": open_cases_for_device(device),
        "paid_still_locked": paid_still_locked,
        "can_verify": contract is not None and has_right(user, Right.VERIFY_PAYMENTS),
        "can_open_case": has_right(user, Right.MANAGE_CASES),
        "can_request_unlock": has_right(user, Right.REQUEST_UNLOCK),
    }
    return render(request, "support/console_device.html", ctx)
