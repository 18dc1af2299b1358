"""Reads of the self-service page: which contract the owner named, and what its owner may read of it.

The owner proves they hold the contract with two things they know: the phone's IMEI or the
contract number, and the phone number on the contract. Privacy rules, held by
tests/test_self_service.py:

* A wrong combination (unknown IMEI, unknown contract, or a phone number that is not the
  contract's) costs the very same database work as any other wrong combination
  (:func:`contract_candidates` is always one query; :func:`owner_status` runs its queries on a
  decoy contract): the page never reveals whether an IMEI or a contract exists.
* The customer's name, address, national ID and phone number are never in the answer; the
  IMEI only its last four digits.

The payment and contact details are those of the phone's lock screen (``payments.locks.screen``),
the lock state that of the contract's decision (``payments.locks.sweep``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from decimal import Decimal
from typing import Any

from babel.dates import format_date, format_time
from django.core.exceptions import ValidationError
from django.db.models import Prefetch, Q, prefetch_related_objects
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy

from devices.models import Device, LockState
from payments.contracts.selectors import contract_position, provider_today
from payments.contracts.services import parse_phone
from payments.locks.screen import ProviderScreenData, screen_build
from payments.locks.selectors import decide_contract, policy_rules
from payments.models import ChannelKind, Contract, ContractStatus, Customer, Installment, contract_number_key
from portal.models import Organisation, OrganisationKind
from selfservice.language import DATE_LOCALES

# A contract number's normalised key can be shared (DLG-1 and DLG-01, or two providers).
MAX_CANDIDATES = 20
LIVE_STATUSES = (ContractStatus.ACTIVE, ContractStatus.DEFAULTED)
SETTLED_STATUSES = (ContractStatus.PAID_OFF, ContractStatus.CANCELLED)
# Never equal to an IMEI (15 digits) nor to a contract-number key (A-Z, 0-9): matches nothing.
_NOTHING = "-"

STATE_HEADLINES: dict[str, str | Promise] = {
    LockState.LOCKED: gettext_lazy("Your phone is locked"),
    LockState.REMINDER: gettext_lazy("Your phone works normally, and a payment is due"),
    LockState.TEMP_UNLOCKED: gettext_lazy("Your phone is unlocked for now"),
    LockState.UNLOCKED: gettext_lazy("Your phone is not locked"),
    LockState.RELEASED: gettext_lazy("Your phone is free: the lock is removed for good"),
}


# --- which contract -------------------------------------------------------------------------


def contract_candidates(identifier: str) -> list[Contract]:
    """Contracts the identifier may name: by the device's IMEI, or by the contract number (normalised).

    Always exactly one query, whatever was typed.
    """
    compact = re.sub(r"[\s.\-/]", "", identifier)
    imei = compact if compact.isdigit() and len(compact) == 15 else _NOTHING
    key = contract_number_key(identifier)
    devices = Device.objects.filter(Q(imei=imei) | Q(imei2=imei)).values("pk")
    return list(
        Contract.objects.filter(Q(device__in=devices) | Q(number_key=key if len(key) >= 2 else _NOTHING))
        .select_related("provider", "customer", "device")
        .order_by("-id")[:MAX_CANDIDATES]
    )


def _e164(raw: str, region: str) -> str:
    """``raw`` in E.164, read as a number of ``region`` unless written internationally; "" if it is none."""
    try:
        return parse_phone(raw, region=region or "ZZ")
    except ValidationError:  # an unparseable number simply matches nothing
        return ""


def owned_contract(candidates: list[Contract], raw_phone: str) -> Contract | None:
    """The candidate whose customer's phone is the number typed (read in the provider's country).

    A live contract wins over a settled one, the newest over older ones.
    """
    parsed: dict[str, str] = {}
    matches = []
    for contract in candidates:
        region = contract.provider.country
        if region not in parsed:
            parsed[region] = _e164(raw_phone, region)
        typed, on_file = parsed[region], str(contract.customer.phone or "")
        if typed and hmac.compare_digest(typed.encode(), on_file.encode()):
            matches.append(contract)
    if not candidates:
        _e164(raw_phone, "")  # the same work as for a wrong phone
    matches.sort(key=lambda c: (c.status not in LIVE_STATUSES, -c.pk))
    return matches[0] if matches else None


def _decoy_contract() -> Contract:
    """A contract that exists nowhere (pk 0): the lookup of a wrong combination runs the same queries on it."""
    provider = Organisation(pk=0, kind=OrganisationKind.PROVIDER, name="", country="", currency="USD")
    return Contract(
        pk=0,
        provider=provider,
        device=Device(pk=0, provider=provider, imei="0" * 15),
        customer=Customer(pk=0, provider=provider, preferred_language=""),
        number="",
        currency="USD",
        financed_amount=Decimal("0"),
        status=ContractStatus.ACTIVE,
        lock_state=LockState.UNLOCKED,
    )


# --- what the owner reads -------------------------------------------------------------------


def _day(value: dt.date | None, lang: str) -> str:
    return format_date(value, format="long", locale=DATE_LOCALES[lang]) if value else ""


def _moment(value: dt.datetime | None, zone: dt.tzinfo, lang: str) -> str:
    if value is None:
        return ""
    local = value.astimezone(zone)
    locale = DATE_LOCALES[lang]
    return f"{format_date(local.date(), format='long', locale=locale)} {format_time(local, 'HH:mm', locale=locale)}"


def owner_status(contract: Contract | None, *, lang: str, now: dt.datetime) -> dict[str, Any] | None:
    """What the owner of ``contract`` may read; None for no contract, after the very same queries."""
    found = contract is not None
    contract = contract if contract is not None else _decoy_contract()
    prefetch_related_objects(
        [contract], Prefetch("installments", queryset=Installment.objects.order_by("number")), "overrides"
    )
    provider = contract.provider
    decision = decide_contract(contract, rules=policy_rules(provider), now=now)
    # ProviderScreenData carries the built-in wording translated for every language (payments/locale).
    data = ProviderScreenData.load(provider)
    screen = screen_build(data=data, contract=contract, decision=decision, language=lang)
    position = contract_position(
        contract, today=provider_today(contract, now), installments=contract.installments.all()
    )
    if not found:
        return None

    state = contract.lock_state
    settled = contract.status in SETTLED_STATUSES or state == LockState.RELEASED
    device = contract.device
    kinds = dict(ChannelKind.choices)
    channels = [{**channel, "kind_label": kinds.get(channel["kind"], "")} for channel in screen["payment_channels"]]
    return {
        "state": state,
        "headline": STATE_HEADLINES.get(state, ""),
        "provider_name": provider.name,
        "device_name": " ".join(part for part in (device.maker, device.model) if part),
        "imei_last4": device.imei[-4:],
        "contract_number": contract.number,
        "currency": contract.currency,
        "settled": settled,
        "overdue": position.arrears if not settled else None,
        "overdue_since": _day(position.overdue_since, lang) if not settled else "",
        "balance": position.balance if not settled else None,
        "next_due_amount": position.next_due_amount if not settled else None,
        "next_due_date": _day(position.next_due_date, lang) if not settled else "",
        "temp_until": _moment(decision.expires_at, provider.zone, lang) if state == LockState.TEMP_UNLOCKED else "",
        # Paid, but the phone has not yet confirmed the unlock (offline, or the command is on its way).
        "unlock_pending": state in (LockState.UNLOCKED, LockState.RELEASED, LockState.REMINDER)
        and device.reported_state == LockState.LOCKED,
        "channels": channels,
        "hotline_numbers": screen["hotline_numbers"],
        "support_email": screen["support_email"],
        "website": screen["website"],
        "service_centers": [sc for sc in screen["service_centers"] if sc.get("phone") or sc.get("website")],
        "fallback": screen["fallback"] if screen["fallback"].get("hotline_numbers") else {},
        "data_kept_notice": screen["data_kept_notice"],
        "factory_reset_warning": screen["factory_reset_warning"],
        "offline_unlock_hint": screen["offline_unlock_hint"],
    }
