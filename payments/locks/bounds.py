"""The size bound of a command, checked when a provider's wording is saved rather than when a sweep meets it.

A phone refuses unread an envelope over ``devices.protocol.MAX_ENVELOPE_BYTES``, so the command
builder refuses to issue one (``CommandTooLarge``), and the sweep leaves such a phone out
(``payments.locks.refusals``). Better still, the wording that would make it is refused when it is
typed: ``lock_screen_text_problem`` builds, with ``payments.locks.screen`` (the only screen builder),
the longest screen the provider's wording can give (every placeholder at its longest, a lock
and a reminder, the provider's payment channels and service centres, a lease and a temporary
unlock's end), and has the command builder check it on a made-up phone, without writing anything.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from devices.models import Device, DeviceCommand, LockState
from devices.protocol import MAX_ENVELOPE_BYTES, MAX_SEQ
from devices.services.commands import CommandTooLarge, StateChange, command_check
from payments.locks.decision import Decision, lease_terms
from payments.locks.screen import ProviderScreenData, screen_build
from payments.locks.selectors import policy_rules
from payments.models import Contract, Customer
from portal.models import Organisation

#: The wording each kind of screen shows (the rest is on every screen).
NOTICES = ("data_kept_notice", "factory_reset_warning", "offline_unlock_hint")
LOCK_FIELDS = ("title", "body", *NOTICES)
REMINDER_FIELDS = ("reminder_title", "reminder_body", *NOTICES)


def _longest_contract(provider: Organisation, language: str) -> Contract:
    """A contract whose every value a placeholder shows is as long as the database allows (never saved)."""
    device = Device(provider=provider, uid=uuid.uuid4(), imei="9" * 15, imei2="9" * 15, command_seq=MAX_SEQ - 1)
    number_length = Contract._meta.get_field("number").max_length or 40
    return Contract(
        provider=provider,
        device=device,
        customer=Customer(provider=provider, preferred_language=language),
        currency=provider.currency,
        number="W" * number_length,
    )


def _longest_change(data: ProviderScreenData, contract: Contract, state: str) -> StateChange:
    """The largest command with ``state``'s wording: a reminder stands for a lock (a lease more).

    Not a temporary unlock: an unlock is never refused for its size (it goes out with a minimal
    screen, devices.services.commands), so it could not tell whether a lock would be.
    """
    provider = data.provider
    reason = "W" * (DeviceCommand._meta.get_field("reason").max_length or 300)
    decision = Decision(state, reason, overdue_since=dt.date(2026, 12, 31), amount_overdue=Decimal("999999999999.99"))
    rules = policy_rules(provider)
    terms = lease_terms(earliest_unpaid_due=dt.date(2099, 12, 31), rules=rules, zone=provider.zone, dispute_hold=False)
    terms["offline_lock_days"] = 200
    terms["lock_window"] = {"start_hour": 23, "end_hour": 24, "weekdays": [0, 1, 2, 3, 4, 5, 6]}
    return StateChange(
        device_id=0,
        state=LockState.REMINDER,
        reason=reason,
        screen=screen_build(data=data, contract=contract, decision=decision),
        allowed_numbers=data.allowed_numbers(),
        **terms,
    )


def lock_screen_text_problem(*, provider: Organisation, language: str, texts: dict[str, str]) -> dict[str, str]:
    """``{field: message}`` naming the wording that would make a command of this provider too large; empty if none.

    ``texts`` is the language's whole wording as it would be saved. The field named is the
    longest of the changed screen's own texts once filled in (placeholders at their longest).
    """
    data = ProviderScreenData.load(provider)
    data.texts[language] = dict(texts)
    contract = _longest_contract(provider, language)
    for state, fields in ((LockState.LOCKED, LOCK_FIELDS), (LockState.REMINDER, REMINDER_FIELDS)):
        try:
            change = _longest_change(data, contract, state)
        except (KeyError, ValueError, IndexError, AttributeError):
            return {}  # a text missing or a placeholder malformed: the model's validation names it
        try:
            command_check(change=change, device=contract.device)
        except CommandTooLarge:
            screen = change.screen
            shown = {"title": screen["title"], "body": screen["body"]}
            lengths = {
                name: len(shown.get(name.removeprefix("reminder_"), texts.get(name, "")).encode()) for name in fields
            }
            field = max(fields, key=lambda name: lengths[name])
            return {
                field: (
                    f"Too long for a phone's lock screen: with it, a command would be over the {MAX_ENVELOPE_BYTES} "
                    "bytes a phone accepts (placeholders such as {provider} count at their full length). Shorten it."
                )
            }
    return {}
