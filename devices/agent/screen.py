"""What the lock screen says, from the command's ``screen``: the content model both drawings use.

The content comes from the command's ``screen`` (built on the server, per provider and
language; keys in docs/lock-pipeline.md). A server bug or an older server must never leave the
owner with a crash instead of a screen, so every key is optional and of any type here:
``Content`` keeps what is usable. The words around the values come from the screen's optional
``labels``; any label missing, empty or unusable is the built-in English of ``LABELS``.
``devices.agent.render`` draws it (terminal and HTML).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

# 112 reaches the emergency services from any GSM phone, even without a SIM card; the
# country's own numbers are in allowed_numbers and are listed on the screen as well.
EMERGENCY_NUMBER = "112"

# Every fixed word the screen shows, in English: the one source of the built-in wording.
# The server sends the same keys translated in ``screen.labels`` (payments/locks/screen.py
# LABELS mirrors this table; a test keeps them identical). ``{name}`` placeholders are
# filled here; a label from the server is used only if it has exactly the same ones.
LABELS: dict[str, str] = {
    # The state, as a headline.
    "state_locked": "LOCKED",
    "state_reminder": "Payment reminder",
    "state_temp_unlocked": "Temporarily unlocked",
    "state_unlocked": "No restrictions",
    "state_released": "Released: no restrictions, for good",
    # When the server sends no title, body or notices. The notices are said even then:
    # both are true of this agent whatever the command.
    "default_title": "This phone is locked",
    "default_body": "This device is locked due to an overdue installment payment.",
    "default_data_kept": "Your data is kept: nothing on this phone is deleted while it is locked.",
    "default_reset_warning": "A factory reset will NOT remove this lock; it only erases your own data.",
    # The facts.
    "locked_by": "Locked by",
    "amount_overdue": "Amount overdue",
    "amount_due": "Amount due",
    "overdue_since": "Overdue since",
    "contract": "Contract",
    "contract_number_quote": "Contract number (quote it when you pay)",
    "imei": "IMEI",
    # How to pay.
    "how_to_pay": "How to pay",
    "account": "Account",
    "reference": "Reference",
    "pay": "Pay",
    "pay_account": "account {account}",
    "kind_bank_transfer": "bank transfer",
    "kind_mobile_money": "mobile money",
    "kind_card": "card",
    "kind_cash_agent": "cash agent",
    # Whom to call.
    "help": "Help",
    "hotline": "Hotline",
    "call_hotline": "Call the hotline",
    "email": "E-mail",
    "website": "Website",
    "other_contacts": "Other contacts",
    "service_centers": "Service centers",
    "service_centers_bring": "Service centers (bring proof of purchase and ID):",
    "bring_proof": "Bring your proof of purchase and ID.",
    "cannot_reach": "Cannot reach {provider}?",
    "your_provider": "your provider",
    # The owner's data and calls.
    "your_data": "Your data",
    "calls_allowed": "Calls allowed",
    "calls_allowed_while_locked": "Calls allowed while locked",
    "emergency_call": "Emergency call",
    # The other states.
    "works_normally": "Your phone works normally.",
    "unlocked_until": "Unlocked {how} until {until}.",
    "unlocked_how": "Unlocked {how}.",
    "by_offline_code": "by an offline code",
    "by_provider": "by your provider",
    "released_note": "Paid off. This phone can no longer be locked.",
    "not_enrolled": "Not enrolled with a server yet.",
    # The offline lease: what will happen, when, and how to avoid it.
    "lease_warning_lock": "This phone will be locked from {when} unless it hears from the server before then.",
    "lease_warning_reminder": "From {when} this phone will show a payment reminder unless it hears from the server.",
    "lease_how_to_avoid": (
        "To avoid it: connect to the internet so the phone checks in, pay via a payment channel, or call the hotline."
    ),
    "offline_since": "This phone has not heard from the server since {since}. Connect it to the internet or pay.",
}
# Longer than any honest translation of a label; a longer one is cut.
LABEL_MAX_CHARS = 200
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class ScreenView:
    """Everything the screen depends on, taken from the agent's state at one instant."""

    state: str
    screen: dict[str, Any] = field(default_factory=dict)
    allowed_numbers: list[str] = field(default_factory=list)
    expires_at: dt.datetime | None = None
    imei: str | None = None
    enrolled: bool = True
    offline_unlock: bool = False
    # The offline lease (docs/lock-pipeline.md, "Offline lease"): a warning shows what will
    # happen (``warning_state``: reminder or locked), when (``warning_at``, said in
    # ``time_zone``, the owner's) and how to avoid it; ``offline_since`` once the lease ended.
    warning: bool = False
    warning_state: str | None = None
    warning_at: dt.datetime | None = None
    time_zone: str = "UTC"
    offline_since: dt.datetime | None = None


@dataclass(frozen=True)
class PaymentChannel:
    name: str
    kind: str
    account: str
    reference: str
    instructions: str


@dataclass(frozen=True)
class ServiceCenter:
    name: str
    phone: str
    website: str


@dataclass(frozen=True)
class Content:
    """The screen's values, each a clean string or list, whatever the server sent."""

    language: str
    title: str
    body: str
    provider: str
    amount: str
    overdue_since: str
    contract: str
    imei: str
    channels: list[PaymentChannel]
    hotlines: list[str]
    email: str
    website: str
    centers: list[ServiceCenter]
    fallback_name: str
    fallback_hotlines: list[str]
    fallback_email: str
    fallback_website: str
    data_kept: str
    reset_warning: str
    offline_hint: str
    allowed: list[str]
    labels: dict[str, str] = field(default_factory=dict)

    def label(self, key: str, **values: str) -> str:
        """The label ``key`` in the screen's language, else in English, placeholders filled."""
        text = self.labels.get(key) or LABELS[key]
        if not values:
            return text
        # One pass: a value that looks like a placeholder stays as it is.
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, str | int | float):
        return " ".join(str(value).split())
    return ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [text for item in value if (text := _text(item))]


def _label(value: Any) -> str:
    """A label from the server: a string, control characters dropped, spaces collapsed, capped."""
    if not isinstance(value, str):
        return ""
    text = "".join(ch for ch in value if ch.isspace() or unicodedata.category(ch) != "Cc")
    return " ".join(text.split())[:LABEL_MAX_CHARS].strip()


def _labels(value: Any) -> dict[str, str]:
    """The usable labels: known keys, non-empty, with exactly the placeholders of the English."""
    labels = {}
    for key, raw in _dict(value).items():
        english = LABELS.get(key) if isinstance(key, str) else None
        text = _label(raw)
        if english is None or not text:
            continue
        if set(_PLACEHOLDER.findall(text)) != set(_PLACEHOLDER.findall(english)):
            continue
        labels[key] = text
    return labels


def _kind(code: str, labels: dict[str, str]) -> str:
    """A channel's kind is a code ("mobile_money"): the known ones are labels, others spelt out."""
    key = f"kind_{code}"
    if key in LABELS:
        return labels.get(key) or LABELS[key]
    return code.replace("_", " ")


def content(view: ScreenView) -> Content:
    """Normalise ``view.screen``: missing or malformed keys become empty values, never errors."""
    s = _dict(view.screen)
    provider = s.get("provider")
    provider_name = _text(_dict(provider).get("name")) if isinstance(provider, dict) else _text(provider)
    labels = _labels(s.get("labels"))
    amount = _text(s.get("amount_overdue_display"))
    if not amount and _text(s.get("amount_overdue")):
        amount = " ".join(p for p in (_text(s.get("currency")), _text(s.get("amount_overdue"))) if p)
    channels = [
        PaymentChannel(
            name=_text(c.get("name")),
            kind=_kind(_text(c.get("kind")), labels),
            account=_text(c.get("account")),
            reference=_text(c.get("reference")),
            instructions=_text(c.get("instructions")),
        )
        for c in _list(s.get("payment_channels"))
        if isinstance(c, dict)
    ]
    centers = [
        ServiceCenter(name=_text(c.get("name")), phone=_text(c.get("phone")), website=_text(c.get("website")))
        for c in _list(s.get("service_centers"))
        if isinstance(c, dict) and (c.get("name") or c.get("phone"))
    ]
    fallback = _dict(s.get("fallback"))
    return Content(
        language=_text(s.get("language")) or "en",
        title=_text(s.get("title")),
        body=_text(s.get("body")),
        provider=provider_name,
        amount=amount,
        overdue_since=_text(s.get("overdue_since")),
        contract=_text(s.get("contract_number")),
        imei=_text(s.get("imei")) or _text(view.imei),
        channels=[c for c in channels if c.name or c.account or c.reference],
        hotlines=_strings(s.get("hotline_numbers")),
        email=_text(s.get("support_email")),
        website=_text(s.get("website")),
        centers=centers,
        fallback_name=_text(fallback.get("name")),
        fallback_hotlines=_strings(fallback.get("hotline_numbers")),
        fallback_email=_text(fallback.get("support_email")),
        fallback_website=_text(fallback.get("website")),
        data_kept=_text(s.get("data_kept_notice")) or labels.get("default_data_kept") or LABELS["default_data_kept"],
        reset_warning=_text(s.get("factory_reset_warning"))
        or labels.get("default_reset_warning")
        or LABELS["default_reset_warning"],
        offline_hint=_text(s.get("offline_unlock_hint")),
        allowed=_strings(view.allowed_numbers),
        labels=labels,
    )


def dial_string(number: str) -> str:
    """The characters a dialer accepts; anything else (``javascript:``, spaces) is dropped."""
    cleaned = re.sub(r"[^0-9+*#]", "", number)
    # "+" only makes sense in front.
    return cleaned[:1] + cleaned[1:].replace("+", "")


def callable_numbers(c: Content) -> set[str]:
    """What a locked phone can dial: the allowed numbers and the provider's hotlines."""
    return {dial_string(n) for n in c.allowed + c.hotlines if dial_string(n)}
