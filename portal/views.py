"""The staff portal shell: sign-in with two-factor, a home page per role, audit and organisation pages."""

from __future__ import annotations

import base64

import qrcode
import qrcode.image.svg
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout as auth_logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.middleware.csrf import rotate_token
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_otp import login as otp_login
from django_otp import match_token
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.audit import audit_record
from portal.browsers import browser_cookie_set
from portal.forms import LoginForm, TokenForm, WebhookForm, choice_field, form_errors_from
from portal.http import client_ip, next_url
from portal.models import ApiKey, OrganisationKind, ProviderWebhook, User, WebhookEvent
from portal.permissions import Right, require, scoped_get
from portal.selectors import audit_events_for, audit_provider_for, organisations_overview, same_browser_approvals
from portal.services import (
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    staff_create,
    staff_password_link,
    staff_password_set,
    staff_role_change,
    staff_roles_for,
    staff_set_active,
)
from portal.shell import links_for, panels_for
from portal.webhooks import (
    webhook_create,
    webhook_event_retry,
    webhook_secret_overlap_end,
    webhook_secret_rotate,
)


class LoginView(auth_views.LoginView):
    template_name = "portal/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True

    def get_redirect_url(self):
        """The ``next`` path if it is safe (``portal.http.next_url``), else "" for LOGIN_REDIRECT_URL."""
        return next_url(self.request, default="")

    def dispatch(self, request, *args, **kwargs):
        response = super().dispatch(request, *args, **kwargs)
        # Every visit of the sign-in page (re)sets the browser cookie the login event records.
        browser_cookie_set(request, response)
        return response


def admin_login(request):
    """``/admin/login/``: the admin signs in through the portal (django-axes, two-factor).

    Django's admin sends a signed-in user without staff access here; sending them on to the
    portal's sign-in page would bounce them straight back to ``/admin/`` for ever. They get
    the 403 page instead; a staff user goes on to ``next``.
    """
    if not request.user.is_authenticated:
        query = request.META.get("QUERY_STRING", "")
        return redirect(reverse("portal:login") + (f"?{query}" if query else ""))
    if not (request.user.is_active and request.user.is_staff):
        raise PermissionDenied("This account has no access to the administration site.")
    return HttpResponseRedirect(next_url(request, default="admin:index"))


def _signed_in_with_second_factor(request, device) -> None:
    """Mark the session verified and give it a new key: a session id seen before the second
    factor (on a shared computer, in a log) must not carry the verified session."""
    otp_login(request, device)
    request.session.cycle_key()
    rotate_token(request)


_THROTTLED = "Too many wrong codes in a row: wait a few seconds, then enter the newest code."


def _throttled(devices) -> bool:
    """django-otp slows down guessing: after each wrong code the next try must wait (1 s, 2 s, 4 s...)."""
    return any(not device.verify_is_allowed()[0] for device in devices)


@login_required
def otp_verify(request):
    """Second step of sign-in: the code from the user's authenticator app."""
    if request.user.is_verified():
        return HttpResponseRedirect(next_url(request))
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if _throttled(TOTPDevice.objects.devices_for_user(request.user, confirmed=True)):
            form.add_error("token", _THROTTLED)
            return render(request, "portal/otp_verify.html", {"form": form, "next": next_url(request, default="")})
        device = match_token(request.user, form.cleaned_data["token"])
        if device is not None:
            _signed_in_with_second_factor(request, device)
            audit_record(actor=request.user, action="login.2fa", obj=request.user, ip_address=client_ip(request))
            return HttpResponseRedirect(next_url(request))
        audit_record(actor=request.user, action="login.2fa_failed", obj=request.user, ip_address=client_ip(request))
        form.add_error("token", "That code is not right or has expired; wait for the next one and try again.")
    return render(request, "portal/otp_verify.html", {"form": form, "next": next_url(request, default="")})


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
            _signed_in_with_second_factor(request, device)
            audit_record(actor=request.user, action="2fa.enrol", obj=request.user, ip_address=client_ip(request))
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
def audit_same_browser(request):
    """For the auditor: approvals where requester and approver signed in from one browser (never refused)."""
    require(request.user, Right.VIEW_AUDIT)
    provider = audit_provider_for(request.user, request.GET.get("provider", ""))
    approvals = same_browser_approvals(request.user, provider=provider)
    page = Paginator(approvals, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "portal/audit_same_browser.html",
        {
            "page": page,
            "provider": provider,
            "lookback_days": settings.FOUR_EYES_LOOKBACK_DAYS,
            "many_providers": request.user.organisation.kind == OrganisationKind.PLATFORM,
        },
    )


@login_required
def organisations(request):
    require(request.user, Right.MANAGE_ORGANISATIONS)
    return render(request, "portal/organisations.html", {"organisations": organisations_overview()})


# --- settings: a provider admin's organisation, API keys, staff and roles ------------------------


class ApiKeyForm(forms.Form):
    """A new API key: a name that says which system uses it."""

    name = forms.CharField(max_length=80, help_text="Which of your systems uses it, e.g. Loan management (prod).")


class StaffCreateForm(forms.Form):
    """A new staff member of the admin's own organisation (choices set per organisation)."""

    username = forms.CharField(max_length=150, help_text="Letters, digits and @ . + - _ only.")
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)
    email = forms.EmailField(required=False)
    role = forms.ChoiceField(error_messages={"required": "Choose the role this person needs, and no more."})

    def __init__(self, *args, organisation, **kwargs):
        super().__init__(*args, **kwargs)
        # No role is preselected: an admin account is never made by not looking at the field.
        choice_field(self, "role").choices = [("", "Choose a role…"), *staff_roles_for(organisation)]


class StaffRoleForm(forms.Form):
    role = forms.ChoiceField(label="Role")

    def __init__(self, *args, organisation, **kwargs):
        super().__init__(*args, **kwargs)
        choice_field(self, "role").choices = staff_roles_for(organisation)


def _own(request, model, pk: int, *, field: str):
    """One object of the signed-in user's own organisation: 404 for any other, then 403 without MANAGE_SETTINGS."""
    obj = model.objects.filter(**{field: request.user.organisation_id}, pk=pk).first()
    if obj is None:
        raise Http404("No such object.")
    require(request.user, Right.MANAGE_SETTINGS)
    return obj


def _shown_once(request, context: dict):
    """The page that shows a secret (API key, set-password link) once: rendered, never cached or stored."""
    response = render(request, "portal/settings_secret.html", {"org": request.user.organisation, **context})
    response["Cache-Control"] = "no-store"
    return response


@login_required
def settings_page(request):
    """The admin's organisation: facts, staff and their roles, API keys, and links to the other settings."""
    require(request.user, Right.MANAGE_SETTINGS)
    org = request.user.organisation
    return render(
        request,
        "portal/settings.html",
        {
            "org": org,
            "staff": org.staff.order_by("-is_active", "role", "username"),
            "api_keys": org.api_keys.order_by("revoked_at", "-created_at") if org.is_provider else [],
            "service_centers": org.service_centers.all() if org.kind == OrganisationKind.PROVIDER else [],
            "api_key_form": ApiKeyForm(),
            "tabs": links_for("settings.tabs", request.user) if org.is_provider else [],
        },
    )


@login_required
def api_key_new(request):
    """Create an API key; the full key is shown on the answer to this POST only, never again."""
    require(request.user, Right.MANAGE_SETTINGS)
    org = request.user.organisation
    if not org.is_provider:
        raise Http404("Only a financing provider has API keys.")
    form = ApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        key, full = api_key_create(
            provider=org, name=form.cleaned_data["name"].strip(), actor=request.user, ip_address=client_ip(request)
        )
        return _shown_once(request, {"api_key": key, "full_key": full, "rotated": False})
    return render(request, "portal/settings_api_key_new.html", {"org": org, "form": form})


@login_required
@require_POST
def api_key_rotate_view(request, pk: int):
    """Replace a key by a new one (shown once); the old key stops working at once."""
    key = _own(request, ApiKey, pk, field="provider")
    try:
        new, full = api_key_rotate(key=key, actor=request.user, ip_address=client_ip(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("portal:settings")
    return _shown_once(request, {"api_key": new, "full_key": full, "rotated": key})


@login_required
@require_POST
def api_key_revoke_view(request, pk: int):
    """Revoke a key: requests with it get 401 from now on."""
    key = _own(request, ApiKey, pk, field="provider")
    if key.revoked_at is None:
        api_key_revoke(key=key, actor=request.user, ip_address=client_ip(request))
        messages.success(request, f"API key “{key.name}” (fl_{key.prefix}_…) revoked; it no longer works.")
    return redirect("portal:settings")


@login_required
def staff_new(request):
    """Add a staff member with a role; a one-time set-password link is shown on the next page."""
    require(request.user, Right.MANAGE_SETTINGS)
    org = request.user.organisation
    form = StaffCreateForm(request.POST or None, organisation=org)
    if request.method == "POST" and form.is_valid():
        try:
            user, (uid, token) = staff_create(
                organisation=org, actor=request.user, ip_address=client_ip(request), **form.cleaned_data
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            return _shown_once(request, {"staff_user": user, "link": _password_link(request, uid, token)})
    return render(request, "portal/settings_staff_new.html", {"org": org, "form": form})


def _password_link(request, uid: str, token: str) -> str:
    return request.build_absolute_uri(reverse("portal:set_password", kwargs={"uidb64": uid, "token": token}))


@login_required
def staff_detail(request, pk: int):
    """One staff member: change the role (POST), with buttons to deactivate and issue a set-password link."""
    member = _own(request, User, pk, field="organisation")
    form = StaffRoleForm(request.POST or None, organisation=member.organisation, initial={"role": member.role})
    if request.method == "POST" and form.is_valid():
        try:
            staff_role_change(
                user=member, role=form.cleaned_data["role"], actor=request.user, ip_address=client_ip(request)
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            member.refresh_from_db()
            messages.success(request, f"{member.username} is now {member.get_role_display().lower()}.")
            return redirect("portal:staff_detail", pk=member.pk)
    return render(
        request,
        "portal/settings_staff_detail.html",
        {"org": member.organisation, "member": member, "form": form, "is_self": member.pk == request.user.pk},
    )


@login_required
@require_POST
def staff_active_view(request, pk: int, active: bool):
    """Deactivate or reactivate a staff member (never oneself, never the last admin)."""
    member = _own(request, User, pk, field="organisation")
    try:
        staff_set_active(user=member, active=active, actor=request.user, ip_address=client_ip(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        done = "reactivated" if active else "deactivated: they can no longer sign in"
        messages.success(request, f"{member.username} {done}.")
    return redirect("portal:staff_detail", pk=member.pk)


@login_required
@require_POST
def staff_password_link_view(request, pk: int):
    """Issue a fresh one-time set-password link for a staff member, shown on this answer only."""
    member = _own(request, User, pk, field="organisation")
    try:
        uid, token = staff_password_link(user=member, actor=request.user, ip_address=client_ip(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("portal:staff_detail", pk=member.pk)
    return _shown_once(request, {"staff_user": member, "link": _password_link(request, uid, token), "again": True})


class SetPasswordView(auth_views.PasswordResetConfirmView):
    """A staff member opens the one-time link their admin gave them and chooses a password."""

    template_name = "portal/set_password.html"
    success_url = reverse_lazy("portal:login")

    def get_user(self, uidb64):
        user = super().get_user(uidb64)
        return user if user is not None and user.is_active else None

    def form_valid(self, form):
        signed_in = self.request.user
        other = signed_in if signed_in.is_authenticated and signed_in.pk != self.user.pk else None
        staff_password_set(
            user=self.user, password=form.cleaned_data["new_password1"], actor=other, ip_address=client_ip(self.request)
        )
        del self.request.session[auth_views.INTERNAL_RESET_SESSION_TOKEN]
        if other is not None:
            # Someone else's link opened in this browser (an admin trying it): never leave the
            # browser signed in as one person right after choosing another's password.
            auth_logout(self.request)
        messages.success(self.request, f"The password of {self.user.get_username()} is set. Sign in with it.")
        return redirect(self.success_url)


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
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            # Rendered, not redirected: the secret is shown on this response only and
            # never stored anywhere a later request could read it back.
            form = WebhookForm()
    return _webhooks_page(request, provider, form=form, new_hook=new_hook, new_secret=new_secret)


def _webhooks_page(request, provider, *, form, new_hook=None, new_secret=None, rotated=False):
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
            "rotated": rotated,
            "events_shown": WEBHOOK_EVENTS_SHOWN,
            "now": timezone.now(),
        },
    )


@login_required
@require_POST
def webhook_secret_rotate_view(request, pk: int):
    """Give an endpoint a new secret, shown once on this answer (audited as webhook.secret_rotate)."""
    provider = _webhook_provider(request.user)
    hook = scoped_get(ProviderWebhook.objects.all(), request.user, Right.MANAGE_SETTINGS, pk=pk)
    try:
        hook, secret = webhook_secret_rotate(webhook=hook, actor=request.user, ip_address=client_ip(request))
    except ValidationError as exc:  # still in the last rotation's overlap (a reload, a second click)
        messages.error(request, " ".join(exc.messages))
        return redirect("portal:webhooks")
    # Rendered, not redirected, for the same reason as a new endpoint's secret.
    return _webhooks_page(request, provider, form=WebhookForm(), new_hook=hook, new_secret=secret, rotated=True)


@login_required
@require_POST
def webhook_secret_overlap_end_view(request, pk: int):
    """Stop an endpoint's previous secret signing now (audited as webhook.secret_overlap_end)."""
    hook = scoped_get(ProviderWebhook.objects.all(), request.user, Right.MANAGE_SETTINGS, pk=pk)
    webhook_secret_overlap_end(webhook=hook, actor=request.user, ip_address=client_ip(request))
    messages.success(request, f"The previous secret of {hook.url} signs nothing any more.")
    return redirect("portal:webhooks")


@login_required
@require_POST
def webhook_event_retry_view(request, pk: int):
    """Give a dead event a fresh set of attempts (audited as webhook.event_retry)."""
    event = scoped_get(WebhookEvent.objects.all(), request.user, Right.MANAGE_SETTINGS, pk=pk)
    try:
        webhook_event_retry(event=event, actor=request.user, ip_address=client_ip(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Event #{event.pk} ({event.event}) is being sent again.")
    return redirect("portal:webhooks")
