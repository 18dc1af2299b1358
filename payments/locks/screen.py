"""The lock-screen content shipped in every device command, per provider and language.

The phone owner staring at the screen must learn who locked the phone and why, how much
is overdue and since when, exactly how to pay, whom to call, and that their data is safe.
See "Lock-screen content" in docs/lock-pipeline.md for the keys.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext_noop

from devices.models import Device
from payments.locks.decision import Decision
from payments.models import Contract, LockScreenText, PaymentChannel
from payments.money import format_money
from portal.models import Organisation, OrganisationKind

# Numbers a locked phone must always be able to call, by country (plus the provider's hotlines).
EMERGENCY_NUMBERS = {
    "LK": ["119", "110", "1990"],
    "KE": ["999", "112", "911"],
    "UG": ["999", "112"],
    "TZ": ["112", "999"],
    "NG": ["112", "199"],
    "IN": ["112", "100", "108"],
    "PK": ["15", "1122"],
    "ID": ["112", "110"],
    "PH": ["911"],
}
GLOBAL_EMERGENCY = ["112", "911"]

# Built-in wording, used until a provider's admin writes their own for a language. The English
# texts are also msgids: their translations in payments/locale (si, sw, ...) are the built-in
# wording of every language of settings.LANGUAGES that has no hand-written entry here.
DEFAULT_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": gettext_noop("This phone is locked by {provider}"),
        "body": gettext_noop(
            "An installment payment of {amount} has been overdue since {overdue_since}. Pay the overdue amount "
            "quoting contract {contract} and the phone unlocks automatically. Questions? Call {hotline}."
        ),
        "reminder_title": gettext_noop("Payment reminder from {provider}"),
        "reminder_body": gettext_noop(
            "Please pay {amount} for contract {contract} to keep using your phone without interruption."
        ),
        "data_kept_notice": gettext_noop(
            "Your photos, messages and apps are safe: nothing on this phone is deleted while it is locked."
        ),
        "factory_reset_warning": gettext_noop(
            "A factory reset will NOT remove this lock. It erases your own data and may also lock your phone account."
        ),
        "offline_unlock_hint": gettext_noop(
            "No internet? Call the hotline with your IMEI: after payment you can receive an unlock code to type here."
        ),
    },
    "sw": {
        "title": "Simu hii imefungwa na {provider}",
        "body": (
            "Malipo ya awamu ya {amount} yamechelewa tangu {overdue_since}. Lipa kiasi kilichochelewa ukitaja "
            "mkataba {contract} na simu itafunguka yenyewe. Maswali? Piga {hotline}."
        ),
        "reminder_title": "Kikumbusho cha malipo kutoka {provider}",
        "reminder_body": (
            "Tafadhali lipa {amount} kwa mkataba {contract} ili uendelee kutumia simu yako bila kukatizwa."
        ),
        "data_kept_notice": ("Picha, ujumbe na programu zako ziko salama: hakuna kinachofutwa wakati simu imefungwa."),
        "factory_reset_warning": (
            "Kurejesha mipangilio ya kiwanda HAKUTAONDOA kufuli hii. "
            "Kunafuta data yako na kunaweza kufunga akaunti ya simu."
        ),
        "offline_unlock_hint": (
            "Huna intaneti? Piga simu ya msaada ukiwa na IMEI yako: baada ya kulipa utapewa msimbo wa kufungua."
        ),
    },
}
TEXT_FIELDS = tuple(DEFAULT_TEXTS["en"])

# The fixed words around the values on the phone ("Amount overdue", "How to pay", ...), sent
# as ``screen.labels`` in the language of the texts. Keys and English mirror LABELS of the
# reference agent (devices/agent/render.py), which falls back to its English for any label
# missing; tests/test_lock_screen_labels.py keeps the two tables identical. The English texts
# are msgids (payments/locale); ``{name}`` placeholders are filled on the phone.
LABELS: dict[str, str] = {
    "state_locked": gettext_noop("LOCKED"),
    "state_reminder": gettext_noop("Payment reminder"),
    "state_temp_unlocked": gettext_noop("Temporarily unlocked"),
    "state_unlocked": gettext_noop("No restrictions"),
    "state_released": gettext_noop("Released: no restrictions, for good"),
    "default_title": gettext_noop("This phone is locked"),
    "default_body": gettext_noop("This device is locked due to an overdue installment payment."),
    "default_data_kept": gettext_noop("Your data is kept: nothing on this phone is deleted while it is locked."),
    "default_reset_warning": gettext_noop("A factory reset will NOT remove this lock; it only erases your own data."),
    "locked_by": gettext_noop("Locked by"),
    "amount_overdue": gettext_noop("Amount overdue"),
    "amount_due": gettext_noop("Amount due"),
    "overdue_since": gettext_noop("Overdue since"),
    "contract": gettext_noop("Contract"),
    "contract_number_quote": gettext_noop("Contract number (quote it when you pay)"),
    "imei": gettext_noop("IMEI"),
    "how_to_pay": gettext_noop("How to pay"),
    "account": gettext_noop("Account"),
    "reference": gettext_noop("Reference"),
    "pay": gettext_noop("Pay"),
    "pay_account": gettext_noop("account {account}"),
    "kind_bank_transfer": gettext_noop("bank transfer"),
    "kind_mobile_money": gettext_noop("mobile money"),
    "kind_card": gettext_noop("card"),
    "kind_cash_agent": gettext_noop("cash agent"),
    "help": gettext_noop("Help"),
    "hotline": gettext_noop("Hotline"),
    "call_hotline": gettext_noop("Call the hotline"),
    "email": gettext_noop("E-mail"),
    "website": gettext_noop("Website"),
    "other_contacts": gettext_noop("Other contacts"),
    "service_centers": gettext_noop("Service centers"),
    "service_centers_bring": gettext_noop("Service centers (bring proof of purchase and ID):"),
    "bring_proof": gettext_noop("Bring your proof of purchase and ID."),
    "cannot_reach": gettext_noop("Cannot reach {provider}?"),
    "your_provider": gettext_noop("your provider"),
    "your_data": gettext_noop("Your data"),
    "calls_allowed": gettext_noop("Calls allowed"),
    "calls_allowed_while_locked": gettext_noop("Calls allowed while locked"),
    "emergency_call": gettext_noop("Emergency call"),
    "works_normally": gettext_noop("Your phone works normally."),
    "unlocked_until": gettext_noop("Unlocked {how} until {until}."),
    "unlocked_how": gettext_noop("Unlocked {how}."),
    "by_offline_code": gettext_noop("by an offline code"),
    "by_provider": gettext_noop("by your provider"),
    "released_note": gettext_noop("Paid off. This phone can no longer be locked."),
    "not_enrolled": gettext_noop("Not enrolled with a server yet."),
    "lease_warning_lock": gettext_noop(
        "This phone will be locked from {when} unless it hears from the server before then."
    ),
    "lease_warning_reminder": gettext_noop(
        "From {when} this phone will show a payment reminder unless it hears from the server."
    ),
    "lease_how_to_avoid": gettext_noop(
        "To avoid it: connect to the internet so the phone checks in, pay via a payment channel, or call the hotline."
    ),
    "offline_since": gettext_noop(
        "This phone has not heard from the server since {since}. Connect it to the internet or pay."
    ),
}


def builtin_texts(language: str) -> dict[str, str] | None:
    """The built-in wording in ``language``: written here, else translated (payments/locale), else None."""
    if language in DEFAULT_TEXTS:
        return DEFAULT_TEXTS[language]
    english = DEFAULT_TEXTS["en"]
    with translation.override(language):
        translated = {name: translation.gettext(text) for name, text in english.items()}
    return translated if translated != english else None


def labels_in(language: str) -> dict[str, str]:
    """Every label of the screen in ``language`` (payments/locale); English where there is no translation."""
    with translation.override(language):
        return {key: translation.gettext(text) for key, text in LABELS.items()}


def language_chain(customer_language: str, provider: Organisation) -> list[str]:
    """The customer's language, then the provider's default, then English."""
    chain = []
    for lang in (customer_language, provider.default_language, "en"):
        if lang and lang not in chain:
            chain.append(lang)
    return chain


#: The most payment channels, and service centres, one lock screen lists (first by their order).
SCREEN_LIST_MAX = 6


@dataclass
class ProviderScreenData:
    """Everything about a provider the screen needs, loaded once per provider (not per contract)."""

    provider: Organisation
    texts: dict[str, dict[str, str]] = field(default_factory=dict)
    channels: list[PaymentChannel] = field(default_factory=list)
    service_centers: list[dict[str, str]] = field(default_factory=list)
    fallback: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, provider: Organisation) -> ProviderScreenData:
        texts = {lang: dict(values) for lang, values in DEFAULT_TEXTS.items()}
        for code, _name in settings.LANGUAGES:
            if code not in texts and (builtin := builtin_texts(code)) is not None:
                texts[code] = dict(builtin)
        for row in LockScreenText.objects.filter(provider=provider):
            texts[row.language] = {f: getattr(row, f) for f in TEXT_FIELDS}
        platform = Organisation.objects.filter(kind=OrganisationKind.PLATFORM).order_by("id").first()
        return cls(
            provider=provider,
            texts=texts,
            # A phone's screen shows a handful; the cap also bounds every command's size, so a
            # provider with sixty channels cannot push commands past MAX_ENVELOPE_BYTES and stop its
            # (or anyone's) sweep.
            channels=list(PaymentChannel.objects.filter(provider=provider, active=True)[:SCREEN_LIST_MAX]),
            service_centers=[
                {"name": sc.name, "phone": (sc.hotline_numbers or [""])[0], "website": sc.website}
                for sc in provider.service_centers.order_by("name")[:SCREEN_LIST_MAX]
            ],
            fallback={
                "name": platform.name,
                "hotline_numbers": list(platform.hotline_numbers),
                "support_email": platform.support_email,
                "website": platform.website,
            }
            if platform
            else {},
        )

    def text_for(self, customer_language: str) -> tuple[str, dict[str, str]]:
        for lang in language_chain(customer_language, self.provider):
            if lang in self.texts:
                return lang, self.texts[lang]
        return "en", DEFAULT_TEXTS["en"]

    def labels_for(self, language: str) -> dict[str, str]:
        """``labels_in(language)``, worked out once per language for all the provider's commands."""
        if language not in self.labels:
            self.labels[language] = labels_in(language)
        return dict(self.labels[language])

    def allowed_numbers(self) -> list[str]:
        """What a locked phone may still call: the provider's hotlines and the country's emergency numbers."""
        numbers = list(self.provider.hotline_numbers)
        for n in EMERGENCY_NUMBERS.get(self.provider.country, []) + GLOBAL_EMERGENCY:
            if n not in numbers:
                numbers.append(n)
        return numbers


def _fill(text: str, values: dict[str, str]) -> str:
    # Templates were validated at save; format_map with known keys only.
    return text.format_map(values)


def _contacts(data: ProviderScreenData, language: str, text: dict[str, str]) -> dict[str, Any]:
    """What every screen carries whatever the state: who to call, the fallbacks, the notices, the labels."""
    provider = data.provider
    return {
        "hotline_numbers": list(provider.hotline_numbers),
        "support_email": provider.support_email,
        "website": provider.website,
        "service_centers": data.service_centers,
        "fallback": data.fallback,
        "data_kept_notice": text["data_kept_notice"],
        "factory_reset_warning": text["factory_reset_warning"],
        "offline_unlock_hint": text["offline_unlock_hint"],
        "labels": data.labels_for(language),
    }


def screen_build(
    *, data: ProviderScreenData, contract: Contract, decision: Decision, language: str | None = None
) -> dict[str, Any]:
    """The ``screen`` object of a command: strings only (amounts as decimal strings), never floats.

    ``language`` (the owner's choice on the self-service page) replaces the customer's preferred one.
    """
    provider = data.provider
    language, text = data.text_for(language or contract.customer.preferred_language)
    amount = decision.amount_overdue or Decimal("0")
    since: dt.date | None = decision.overdue_since
    values = {
        "provider": provider.name,
        "amount": format_money(amount, contract.currency),
        "currency": contract.currency,
        "overdue_since": f"{since.day} {since:%b %Y}" if since else "",
        "contract": contract.number,
        "imei": contract.device.imei,
        "hotline": (provider.hotline_numbers or [""])[0],
    }
    reminder = decision.state == "reminder"
    return {
        "language": language,
        "title": _fill(text["reminder_title" if reminder else "title"], values),
        "body": _fill(text["reminder_body" if reminder else "body"], values),
        "provider": {"name": provider.name},
        "amount_overdue": str(amount),
        "currency": contract.currency,
        "amount_overdue_display": values["amount"],
        "overdue_since": since.isoformat() if since else None,
        "contract_number": contract.number,
        "imei": contract.device.imei,
        "payment_channels": [
            {
                "name": ch.name,
                "kind": ch.kind,
                "account": ch.account,
                "reference": _fill(ch.reference, values),
                "instructions": ch.instructions,
            }
            for ch in data.channels
        ],
        **_contacts(data, language, text),
    }


def screen_without_contract(*, data: ProviderScreenData, device: Device) -> dict[str, Any]:
    """The ``screen`` of a release for a phone that has no contract (a retail unit locked by mistake).

    The same keys as ``screen_build`` (a phone reads one shape), with nothing owed and no title or body.
    """
    provider = data.provider
    language, text = data.text_for(provider.default_language)
    return {
        "language": language,
        "title": "",
        "body": "",
        "provider": {"name": provider.name},
        "amount_overdue": "0",
        "currency": provider.currency,
        "amount_overdue_display": "",
        "overdue_since": None,
        "contract_number": "",
        "imei": device.imei,
        "payment_channels": [],
        **_contacts(data, language, text),
    }
