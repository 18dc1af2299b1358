"""The staff portal shell: sign-in with two-factor, a home page per role, audit and organisation pages."""

from __future__ import annotations

import base64

import qrcode
import qrcode.image.svg
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_otp import login as otp_login
from django_otp import match_token
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.forms import LoginForm, TokenForm, WebhookForm
from portal.models import OrganisationKind, WebhookEvent
from portal.permissions import Right, require, scoped_get
from portal.selectors import audit_events_for, organisations_overview
from portal.services import audit_record
from portal.shell import panels_for
from portal.webhooks import webhook_create, webhook_event_retry


class LoginView(auth_views.LoginView):
    template_name = "portal/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True


_THROTTLED = "Too many wrong codes in a row: wait a few seconds, then enter the newest code."


def _throttled(devices) -> bool:
    """django-otp slows down guessing: after each wrong code the next try must wait (1 s, 2 s, 4 s...)."""
    return any(not device.verify_is_allowed()[0] for device in devices)


def _next_url(request, default="portal:home"):
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return target
    return default


@login_required
def otp_verify(request):
    """Second step of sign-in: the code from the user's authenticator app."""
    if request.user.is_verified():
        return redirect(_next_url(request))
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if _throttled(TOTPDevice.objects.devices_for_user(request.user, confirmed=True)):
            form.add_error("token", _THROTTLED)
            return render(request, "portal/otp_verify.html", {"form": form, "next": _next_url(request, "")})
        device = match_token(request.user, form.cleaned_data["token"])
        if device is not None:
            otp_login(request, device)
            audit_record(
                actor=request.user, action="login.2fa", obj=request.user, ip_address=request.META.get("REMOTE_ADDR")
            )
            return redirect(_next_url(request))
        audit_record(
            actor=request.user, action="login.2fa_failed", obj=request.user, ip_address=request.META.get("REMOTE_ADDR")
        )
        form.add_error("token", "That code is not right or has expired; wait for the next one and try again.")
    return render(request, "portal/otp_verify.html", {"form": form, "next": _next_url(request, "")})


@login_required
def otp_setup(request):
    """Enrol a TOTP authenticator: scan the QR code, confirm with a code."""
    if TOTPDevice.objects.filter(user=request.user, confirmed=True).exists() and not request.user.is_verified():
        return redirect("portal:otp_verify")
    device, _created = TOTPDevice.objects.get_or_create(
        user=request.user, confirmed=False, defaults={"name": "Authenticator app"}
    )
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and _throttled([device]):
        form.add_error("token", _THROTTLED)
    elif request.method == "POST" and form.is_valid():
        if device.verify_token(form.cleaned_data["token"]):
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            otp_login(request, device)
            audit_record(
                actor=request.user, action="2fa.enrol", obj=request.user, ip_address=request.META.get("REMOTE_ADDR")
            )
            messages.success(request, "Two-factor authentication is on for your account.")
            return redirect("portal:home")
        form.add_error("token", "That code does not match; check the time on your phone and try again.")
    qr_svg = qrcode.make(device.config_url, image_factory=qrcode.image.svg.SvgPathImage, box_size=8).to_string(
        encoding="unicode"
    )
    secret = base64.b32encode(device.bin_key).decode()
    return render(
        request,
        "portal/otp_setup.html",
        {"form": form, "qr_svg": qr_svg, "secret": secret, "required": request.user.requires_2fa},
    )


def healthz(request):
    """Liveness for load balancers: the process answers; touches neither database nor cache."""
    from django.http import JsonResponse

    return JsonResponse({"ok": True})


@login_required
def home(request):
    """A home page per role: the panels this person's role works with, contributed by each app."""
    user = request.user
    return render(request, "portal/home.html", {"org": user.organisation, "panels": panels_for(user)})


@login_required
def audit(request):
    require(request.user, Right.VIEW_AUDIT)
    events = audit_events_for(request.user)
    action = request.GET.get("action", "").strip()
    if action:
        events = events.filter(action__startswith=action)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(request, "portal/audit.html", {"page": page, "action": action})


@login_required
def organisations(request):
    require(request.user, Right.MANAGE_ORGANISATIONS)
    return render(request, "portal/organisations.html", {"organisations": organisations_overview()})


@login_required
def settings_page(request):
    require(request.user, Right.MANAGE_SETTINGS)
    org = request.user.organisation
    return render(
        request,
        "portal/settings.html",
        {
            "org": org,
            "staff": org.staff.order_by("role", "username"),
            "api_keys": org.api_keys.order_by("-created_at"),
            "service_centers": org.service_centers.all() if org.kind == OrganisationKind.PROVIDER else [],
        },
    )


#: The Webhooks page lists this many of the newest events.
WEBHOOK_EVENTS_SHOWN = 50


def _webhook_provider(user):
    """The provider whose webhooks ``user`` manages: 403 without the right, 404 for a non-provider."""
    require(user, Right.MANAGE_SETTINGS)
    if user.organisation.kind != OrganisationKind.PROVIDER:
        raise Http404("Only a financing provider has webhooks.")
    return user.organisation


@login_required
def webhooks(request):
    """A provider admin's webhooks: endpoints, a new one (its secret shown once), recent events, retries."""
    provider = _webhook_provider(request.user)
    form = WebhookForm(request.POST or None)
    new_secret = None
    new_hook = None
    if request.method == "POST" and form.is_valid():
        try:
            new_hook, new_secret = webhook_create(
                provider=provider,
                url=form.cleaned_data["url"],
                events=form.cleaned_data["events"],
                actor=request.user,
                ip_address=request.META.get("REMOTE_ADDR"),
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            # Rendered, not redirected: the secret is shown on this response only and
            # never stored anywhere a later request could read it back.
            form = WebhookForm()
    events = (WebhookEvent.objects.filter(provider=provider).select_related("webhook").order_by("-created_at", "-id"))[
        :WEBHOOK_EVENTS_SHOWN
    ]
    return render(
        request,
        "portal/webhooks.html",
        {
            "org": provider,
            "form": form,
            "hooks": provider.webhooks.order_by("-created_at", "-id"),
            "events": events,
            "new_hook": new_hook,
            "new_secret": new_secret,
            "events_shown": WEBHOOK_EVENTS_SHOWN,
        },
    )


@login_required
@require_POST
def webhook_event_retry_view(request, pk: int):
    """Give a dead event a fresh set of attempts (audited as webhook.event_retry)."""
    event = scoped_get(WebhookEvent.objects.all(), request.user, Right.MANAGE_SETTINGS, pk=pk)
    try:
        webhook_event_retry(event=event, actor=request.user, ip_address=request.META.get("REMOTE_ADDR"))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Event #{event.pk} ({event.event}) is being sent again.")
    return redirect("portal:webhooks")
