"""Staff pages for the lock policy, the lock-screen wording with its preview, and paid-but-still-locked phones."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, cast
from urllib.parse import urlencode

from csp.constants import NONE, SELF
from csp.decorators import csp_replace
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.clickjacking import xframe_options_sameorigin

from devices.agent.render import ScreenView, render_html
from devices.models import Device
from payments.locks.decision import Decision
from payments.locks.forms import LockPolicyForm, LockScreenTextForm
from payments.locks.screen import DEFAULT_TEXTS, TEXT_FIELDS, ProviderScreenData, builtin_texts, screen_build
from payments.locks.selectors import paid_still_locked
from payments.locks.services import LOCK_POLICY_FIELDS, lock_policy_update, lock_screen_text_save
from payments.models import (
    LOCK_SCREEN_PLACEHOLDERS,
    Contract,
    Customer,
    LockPolicy,
    LockScreenText,
    validate_lock_screen_text,
)
from portal.forms import form_errors_from
from portal.http import client_ip
from portal.models import Organisation, User
from portal.permissions import Right, require


@login_required
def lock_policy(request: HttpRequest) -> HttpResponse:
    """The provider admin edits reminders, grace and the hours in which a lock may start."""

    user = cast(User, request.user)  # login_required: a signed-in staff user
    require(user, Right.MANAGE_SETTINGS)
    provider = user.organisation
    current = LockPolicy.objects.filter(provider=provider).first() or LockPolicy(provider=provider)
    initial = {name: getattr(current, name) for name in LOCK_POLICY_FIELDS}
    form = LockPolicyForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            lock_policy_update(provider=provider, actor=user, ip_address=client_ip(request), **form.cleaned_data)
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            messages.success(request, "Lock policy saved. The next sweep applies it.")
            return redirect("locks:policy")
    return render(request, "payments/lock_policy.html", {"form": form, "provider": provider})


@login_required
def paid_still_locked_list(request: HttpRequest) -> HttpResponse:
    """Arrears cleared, unlock not acknowledged in time: the list support works first."""

    contracts = paid_still_locked(cast(User, request.user))  # login_required: a signed-in staff user
    page = Paginator(contracts, 50).get_page(request.GET.get("page"))
    return render(request, "payments/paid_still_locked.html", {"page": page})


#: Sample values the preview fills in: what a real owner's screen shows, for a contract that does not exist.
PREVIEW_CONTRACT = "CONTRACT-0001"


PREVIEW_IMEI = "356938035643809"


PREVIEW_AMOUNT = "12500"


PREVIEW_OVERDUE_DAYS = 10


#: The states whose screens use the admin's text, as the preview offers them.
PREVIEW_STATES = {"locked": "Locked", "reminder": "Payment reminder"}


#: Session key of unsaved texts being previewed, by language.
_DRAFT_SESSION_KEY = "lock_screen_draft"


def lock_screen_preview_command(
    *,
    provider: Organisation,
    language: str,
    state: str = "locked",
    texts: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The ``screen`` and ``allowed_numbers`` the next ``state`` command would carry, for sample values.

    Built exactly as the sweep builds a real command (``ProviderScreenData.load`` and
    ``screen_build`` of ``payments.locks.screen``, see ``payments.locks.sweep.apply_decisions``):
    the provider's saved texts, active payment channels in their order, service centres
    and the platform's fallback contacts; only the contract, owner and amounts are samples.
    ``texts`` (unsaved wording for ``language``) replaces the saved one; nothing is written.
    """

    data = ProviderScreenData.load(provider)
    if texts is not None:
        data.texts[language] = {name: texts[name] for name in TEXT_FIELDS}
    contract = Contract(provider=provider, number=PREVIEW_CONTRACT, currency=provider.currency or "USD")
    contract.customer = Customer(provider=provider, preferred_language=language)
    contract.device = Device(provider=provider, imei=PREVIEW_IMEI)
    today: dt.date = provider.today(now)  # type: ignore[no-untyped-call]  # Organisation.today is unannotated
    decision = Decision(
        state=state,
        reason="Preview",
        overdue_since=today - dt.timedelta(days=PREVIEW_OVERDUE_DAYS),
        amount_overdue=Decimal(PREVIEW_AMOUNT),
    )
    return {
        "screen": screen_build(data=data, contract=contract, decision=decision),
        "allowed_numbers": data.allowed_numbers(),
    }


def lock_screen_preview_html(
    *, provider: Organisation, language: str, state: str = "locked", texts: Mapping[str, str] | None = None
) -> str:
    """The 360×800 page the reference phone agent draws for that command (``devices.agent.render``)."""

    command = lock_screen_preview_command(provider=provider, language=language, state=state, texts=texts)
    return render_html(
        ScreenView(
            state=state,
            screen=command["screen"],
            allowed_numbers=command["allowed_numbers"],
            imei=PREVIEW_IMEI,
        )
    )


def _lock_screen_language(request: HttpRequest, language: str | None) -> tuple[Organisation, str, list[str]]:
    """(provider, language, the provider's languages) for a provider admin; 403 / 404 otherwise."""

    user = cast(User, request.user)  # login_required: a signed-in staff user
    require(user, Right.MANAGE_SETTINGS)
    provider = user.organisation
    if not provider.is_provider:
        raise Http404("Only a financing provider has a lock screen.")
    languages = list(dict.fromkeys([*provider.languages, "en"]))
    language = language or languages[0]
    if language not in languages:
        raise Http404("Not one of this provider's languages.")
    return provider, language, languages


def _preview_state(value: str | None) -> str:
    return value if value in PREVIEW_STATES else "locked"


def _draft_problems(texts: Mapping[str, str]) -> dict[str, list[str]]:
    """The placeholder errors the save would report, without saving."""

    problems: dict[str, list[str]] = {}
    for name in ("title", "body", "reminder_title", "reminder_body"):
        try:
            validate_lock_screen_text(texts[name])
        except ValidationError as exc:
            problems[name] = exc.messages
    return problems


@login_required
def lock_screen_texts(request: HttpRequest, language: str | None = None) -> HttpResponse:
    """The provider admin writes what locked phones say, per language, and previews it on a phone.

    POST ``action=preview`` keeps the unsaved text in the session and shows it in the phone
    frame; any other POST saves it (audited by the service). The frame loads
    ``locks:screen_preview``: the reference agent's own rendering of the next command.
    """

    provider, language, languages = _lock_screen_language(request, language)
    saved = LockScreenText.objects.filter(provider=provider, language=language).first()
    defaults = builtin_texts(language) or DEFAULT_TEXTS["en"]
    initial = {f: getattr(saved, f) if saved else defaults[f] for f in TEXT_FIELDS}
    form = LockScreenTextForm(request.POST or None, initial=initial)
    state = _preview_state(request.POST.get("preview_state") or request.GET.get("state"))
    drafts = request.session.get(_DRAFT_SESSION_KEY, {})
    draft: dict[str, str] | None = None
    if request.method == "POST" and form.is_valid():
        texts = {name: value.strip() for name, value in form.cleaned_data.items()}
        if request.POST.get("action") == "preview":
            for name, errors in _draft_problems(texts).items():
                form.add_error(name, errors)
            if form.is_valid():
                draft = texts
                request.session[_DRAFT_SESSION_KEY] = {**drafts, language: texts}
        else:
            try:
                lock_screen_text_save(
                    provider=provider,
                    language=language,
                    actor=cast(User, request.user),  # login_required: a signed-in staff user
                    ip_address=client_ip(request),
                    **texts,
                )
            except ValidationError as exc:
                form_errors_from(form, exc)
            else:
                if language in drafts:
                    request.session[_DRAFT_SESSION_KEY] = {k: v for k, v in drafts.items() if k != language}
                messages.success(
                    request, f"Lock-screen text ({language}) saved; phones get it with their next command."
                )
                return redirect(f"{reverse('locks:screen_language', args=[language])}?state={state}")
    broken = form.is_bound and not form.is_valid()
    screen = None
    if not broken:
        screen = lock_screen_preview_command(provider=provider, language=language, state=state, texts=draft)["screen"]
    query = urlencode({"state": state, **({"draft": 1} if draft else {})})
    return render(
        request,
        "payments/lock_screen_texts.html",
        {
            "form": form,
            "provider": provider,
            "language": language,
            "languages": languages,
            "saved": saved,
            "placeholders": LOCK_SCREEN_PLACEHOLDERS,
            "screen": screen,
            "draft": draft,
            "state": state,
            "states": PREVIEW_STATES,
            "preview_url": f"{reverse('locks:screen_preview', args=[language])}?{query}",
            "channel_count": provider.payment_channels.filter(active=True).count(),
        },
    )


_View = Callable[..., HttpResponseBase]


def _preview_headers(view: _View) -> _View:
    """Let the portal's own pages frame the preview (and nobody else); the page itself may load nothing."""

    policy = {
        "default-src": [NONE],
        "script-src": [NONE],
        "style-src": ["'unsafe-inline'"],  # the agent's page carries its own <style>
        "img-src": [NONE],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [NONE],
        "frame-ancestors": [SELF],
    }
    return xframe_options_sameorigin(csp_replace(policy)(view))


@login_required
@_preview_headers
def lock_screen_preview(request: HttpRequest, language: str) -> HttpResponse:
    """The reference agent's 360×800 lock screen for the next command: saved text, or (``draft=1``) the unsaved one."""

    provider, language, _languages = _lock_screen_language(request, language)
    texts = request.session.get(_DRAFT_SESSION_KEY, {}).get(language) if request.GET.get("draft") else None
    page = lock_screen_preview_html(
        provider=provider, language=language, state=_preview_state(request.GET.get("state")), texts=texts
    )
    response = HttpResponse(page, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response
