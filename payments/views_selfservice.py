"""The device owner's public self-service page: "is my phone locked, what do I owe, how do I pay?".

Public, no login, reachable from any other phone or computer. The owner proves they hold the
contract with two things they know: the phone's IMEI or the contract number, and the phone
number on the contract. The answer then says, in the owner's language (English, Sinhala or
Swahili): the lock state in plain words, the amount overdue and the total still to pay, the
next due date, every way to pay with the exact account and reference, and whom to call. The
payment and contact details are those of the phone's lock screen (``payments.lockscreen``).

Privacy rules, enforced here and held by tests/test_self_service.py:

* A wrong combination (unknown IMEI, unknown contract, or a phone number that is not the
  contract's) gets the very same page, status code and database work as any other wrong
  combination: the page never reveals whether an IMEI or a contract exists.
* The customer's name, address, national ID and phone number are never shown; the IMEI only
  masked to its last four digits.
* Tries are limited per client address (``RATE_LIMIT_TRIES`` per ``RATE_LIMIT_WINDOW``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from decimal import Decimal

from babel.dates import format_date, format_time
from django import forms
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db.models import Prefetch, Q, prefetch_related_objects
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone, translation
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods

from devices.models import Device, LockState
from payments.lockscreen import ProviderScreenData, screen_build
from payments.models import ChannelKind, Contract, ContractStatus, Customer, Installment, contract_number_key
from payments.selectors import contract_position
from payments.services import parse_phone
from payments.sweep import decide_contract, policy_rules
from portal.http import client_ip
from portal.models import Organisation, OrganisationKind

# The languages of this page, each named in itself (an owner looks for their own script).
LANGUAGES = (("en", "English"), ("si", "සිංහල"), ("sw", "Kiswahili"))
LANGUAGE_CODES = frozenset(code for code, _name in LANGUAGES)
# Babel locales for dates: "15 March 2026", "2026 මාර්තු 15", "15 Machi 2026".
_DATE_LOCALES = {"en": "en_GB", "si": "si", "sw": "sw"}

RATE_LIMIT_TRIES = 10
RATE_LIMIT_WINDOW = 600  # seconds
# A contract number's normalised key can be shared (DLG-1 and DLG-01, or two providers).
MAX_CANDIDATES = 20
LIVE_STATUSES = (ContractStatus.ACTIVE, ContractStatus.DEFAULTED)
SETTLED_STATUSES = (ContractStatus.PAID_OFF, ContractStatus.CANCELLED)
# Never equal to an IMEI (15 digits) nor to a contract-number key (A-Z, 0-9): matches nothing.
_NOTHING = "-"

TEMPLATE = "payments/selfservice.html"

STATE_HEADLINES = {
    LockState.LOCKED: gettext_lazy("Your phone is locked"),
    LockState.REMINDER: gettext_lazy("Your phone works normally, and a payment is due"),
    LockState.TEMP_UNLOCKED: gettext_lazy("Your phone is unlocked for now"),
    LockState.UNLOCKED: gettext_lazy("Your phone is not locked"),
    LockState.RELEASED: gettext_lazy("Your phone is free: the lock is removed for good"),
}
NOT_FOUND = gettext_lazy("We could not find a phone with these details.")
TOO_MANY = gettext_lazy(
    "Too many tries from this connection. For your security, please wait %(minutes)s minutes and try again.",
)


class LookupForm(forms.Form):
    identifier = forms.CharField(
        label=gettext_lazy("IMEI or contract number"),
        max_length=60,
        help_text=gettext_lazy(
            "The IMEI is shown on the lock screen and on the phone's box. "
            "The contract number is on your contract and on your payment receipts."
        ),
        error_messages={"required": gettext_lazy("Enter the IMEI or the contract number.")},
    )
    phone = forms.CharField(
        label=gettext_lazy("Phone number on the contract"),
        max_length=30,
        help_text=gettext_lazy("As you usually write it, with or without the country code."),
        error_messages={"required": gettext_lazy("Enter the phone number on your contract.")},
    )

    def clean_phone(self) -> str:
        raw = self.cleaned_data["phone"]
        digits = re.sub(r"\D", "", raw)
        if not 6 <= len(digits) <= 15 or re.search(r"[^\d\s()+.\-/]", raw):
            raise forms.ValidationError(gettext_lazy("Enter the phone number on your contract."))
        return raw


# --- language -------------------------------------------------------------------


def _chosen_language(request) -> str:
    """The language the owner picked with a link (``?lang=si``) or kept in the form."""
    lang = (request.POST.get("lang") or request.GET.get("lang") or "").strip().lower()
    return lang if lang in LANGUAGE_CODES else ""


def _browser_language(request) -> str:
    """The most wanted language of Accept-Language that this page speaks, else English."""
    offered = []
    for position, part in enumerate(request.headers.get("Accept-Language", "")[:500].split(",")):
        tag, _sep, params = part.strip().partition(";")
        params = params.strip()
        try:
            quality = float(params[2:]) if params.startswith("q=") else 1.0
        except ValueError:
            quality = 0.0
        code = tag.strip().lower().split("-")[0]
        if quality > 0 and code in LANGUAGE_CODES:
            offered.append((-quality, position, code))
    return min(offered)[2] if offered else "en"


# --- rate limit -------------------------------------------------------------------


def _client_network(address: str | None) -> str:
    """The address counted for the rate limit: an IPv4 address, or an IPv6 address's /64.

    One IPv6 subscriber gets a whole /64 and can change addresses at will; counting per
    address would let them guess without limit.
    """
    import ipaddress

    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return "unknown"
    if parsed.version == 4:
        return str(parsed)
    if parsed.ipv4_mapped:  # ::ffff:198.51.100.7 is that IPv4 client
        return str(parsed.ipv4_mapped)
    return str(ipaddress.ip_network(f"{parsed}/64", strict=False))


def _over_rate_limit(request) -> bool:
    """Count one try for the client address; True past ``RATE_LIMIT_TRIES`` in the window."""
    key = f"selfservice:tries:{_client_network(client_ip(request))}"
    cache.add(key, 0, timeout=RATE_LIMIT_WINDOW)  # the window starts at the first try
    try:
        tries = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=RATE_LIMIT_WINDOW)
        tries = 1
    return tries > RATE_LIMIT_TRIES


# --- lookup ---------------------------------------------------------------------


def _candidates(identifier: str) -> list[Contract]:
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


def _owned_contract(candidates: list[Contract], raw_phone: str) -> Contract | None:
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


def _day(value: dt.date | None, lang: str) -> str:
    return format_date(value, format="long", locale=_DATE_LOCALES[lang]) if value else ""


def _moment(value: dt.datetime | None, zone, lang: str) -> str:
    if value is None:
        return ""
    local = value.astimezone(zone)
    locale = _DATE_LOCALES[lang]
    return f"{format_date(local.date(), format='long', locale=locale)} {format_time(local, 'HH:mm', locale=locale)}"


def _phone_status(contract: Contract | None, *, lang: str, now: dt.datetime) -> dict | None:
    """What the owner of ``contract`` may read; None for no contract, after the very same queries."""
    found = contract is not None
    contract = contract if found else _decoy_contract()
    prefetch_related_objects(
        [contract], Prefetch("installments", queryset=Installment.objects.order_by("number")), "overrides"
    )
    provider = contract.provider
    decision = decide_contract(contract, rules=policy_rules(provider), now=now)
    # ProviderScreenData carries the built-in wording translated for every language (payments/locale).
    data = ProviderScreenData.load(provider)
    screen = screen_build(data=data, contract=contract, decision=decision, language=lang)
    position = contract_position(contract, today=provider.today(now), installments=contract.installments.all())
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


# --- the view -----------------------------------------------------------------------


def _page(request, *, lang: str, chosen: str, status: int = 200, **context) -> HttpResponse:
    with translation.override(lang):
        response = render(
            request,
            TEMPLATE,
            {
                "lang": lang,
                "chosen_lang": chosen,
                "languages": LANGUAGES,
                **context,
            },
            status=status,
        )
    patch_vary_headers(response, ["Accept-Language"])
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


@never_cache
@csrf_protect
@require_http_methods(["GET", "POST"])
def phone_status(request) -> HttpResponse:
    """GET: the form. POST: the phone's status for the right combination, else "not found"."""
    chosen = _chosen_language(request)
    lang = chosen or _browser_language(request)
    if request.method == "GET":
        return _page(request, lang=lang, chosen=chosen, form=LookupForm())

    if _over_rate_limit(request):
        with translation.override(lang):
            message = TOO_MANY % {"minutes": RATE_LIMIT_WINDOW // 60}
        return _page(request, lang=lang, chosen=chosen, status=429, rate_limited=message)

    with translation.override(lang):
        form = LookupForm(request.POST)
        valid = form.is_valid()
    if not valid:
        return _page(request, lang=lang, chosen=chosen, status=400, form=form)

    contract = _owned_contract(_candidates(form.cleaned_data["identifier"]), form.cleaned_data["phone"])
    if contract is not None and not chosen and contract.provider.default_language in LANGUAGE_CODES:
        lang = contract.provider.default_language  # the owner's provider is known now
    status = _phone_status(contract, lang=lang, now=timezone.now())
    if status is None:
        return _page(request, lang=lang, chosen=chosen, form=LookupForm(), not_found=NOT_FOUND)
    return _page(request, lang=lang, chosen=chosen, status_info=status)
