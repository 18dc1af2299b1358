"""Staff portal pages for the device registry."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from devices.delivery import command_retry, delivery_status, with_superseded
from devices.forms import EnrollmentTokenForm
from devices.models import DeliveryAttempt, Device, DeviceCommand, EnrollmentToken, LockState
from devices.selectors import (
    SILENT_DAYS_MAX,
    device_last_refused_enrolment,
    devices_by_imei,
    devices_not_heard_from,
    enrollment_tokens_of,
    silent_days_default,
)
from devices.services.credentials import device_key_fingerprint
from devices.services.enrolment import device_reenrollment_code_issue
from devices.services.tokens import enrollment_token_create, enrollment_token_revoke
from portal.forms import form_errors_from
from portal.http import client_ip
from portal.models import AuditEvent, Organisation, OrganisationKind
from portal.permissions import Right, has_right, require, scoped_get, scoped_list
from portal.shell import links_for

#: The device page shows this many of the newest commands.
COMMAND_HISTORY = 20


@login_required
def device_list(request):
    devices = scoped_list(Device.objects.select_related("provider"), request.user, Right.VIEW_DEVICES)
    q = request.GET.get("q", "").strip()
    state = request.GET.get("state", "")
    if q:
        devices = devices_by_imei(devices, q) if any(c.isdigit() for c in q) else devices.filter(serial_number=q)
    if state in LockState.values:
        devices = devices.filter(desired_state=state)
    provider = _list_provider(request)
    if provider is not None:
        devices = devices.filter(provider=provider)
    silent = None
    if "silent" in request.GET:
        silent = _silent_days(request.GET["silent"], provider or request.user.organisation)
        devices = devices_not_heard_from(devices, days=silent, now=timezone.now())
    else:
        devices = devices.order_by("-id")
    page = Paginator(devices, 50).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "q": q,
        "state": state,
        "states": LockState.choices,
        "silent": silent,
        "provider": provider,
        "silent_max": SILENT_DAYS_MAX,
    }
    return render(request, "devices/list.html", context)


def _list_provider(request):
    """The provider the list is narrowed to (``?provider=<id>``): 404 for one the user may not see."""
    raw = request.GET.get("provider", "").strip()
    if not raw:
        return None
    return scoped_get(
        Organisation.objects.filter(kind=OrganisationKind.PROVIDER),
        request.user,
        Right.VIEW_DEVICES,
        provider_field="pk",
        pk=raw,
    )


def _silent_days(raw: str, provider) -> int:
    """``?silent=N``: N whole days (1 to SILENT_DAYS_MAX); empty or unreadable: the provider's offline warning."""
    try:
        days = int(raw)
    except ValueError:
        days = 0
    return days if 1 <= days <= SILENT_DAYS_MAX else silent_days_default(provider)


@login_required
def device_detail(request, pk: int):
    device = scoped_get(Device.objects.select_related("provider"), request.user, Right.VIEW_DEVICES, pk=pk)
    return render(request, "devices/detail.html", _detail_context(request, device))


def _detail_context(request, device: Device, **extra) -> dict:
    # devices knows nothing of money: the page links to the contracts page, it does not read contracts.
    now = timezone.now()
    code_expires = device.reenrollment_code_expires_at
    return {
        "device": device,
        "provider": device.provider,
        "can_see_finance": has_right(request.user, Right.VIEW_FINANCE),
        "commands": _command_history(device),
        "command_history_limit": COMMAND_HISTORY,
        "can_see_delivery_errors": _can_see_delivery_errors(request.user),
        "device_key_fingerprint": device_key_fingerprint(device.device_key),
        "unused_code_expires_at": code_expires
        if device.reenrollment_code_digest and code_expires and code_expires > now
        else None,
        "last_refused_enrolment": device_last_refused_enrolment(device),
        "can_issue_reenrollment_code": has_right(request.user, Right.MANAGE_DEVICES) and device.enrolled_at is not None,
        # What other apps add to this page (a rekey request, the contracts): devices names no app above it.
        "enrolment_links": links_for("device.enrolment", request.user, device),
        "financing_links": links_for("device.financing", request.user, device),
        **extra,
    }


@login_required
@require_POST
def device_reenrollment_code(request, pk: int):
    """Issue a one-time re-enrolment code for a phone that lost its device key; shown on this answer only."""
    device = scoped_get(Device.objects.select_related("provider"), request.user, Right.MANAGE_DEVICES, pk=pk)
    try:
        code, expires_at = device_reenrollment_code_issue(
            device=device, actor=request.user, ip_address=client_ip(request)
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("devices:detail", pk=device.pk)
    device.refresh_from_db()
    context = _detail_context(request, device, reenrollment_code=code, reenrollment_code_expires_at=expires_at)
    # Rendered, never redirected: the code is in this response only, never stored or cached.
    response = render(request, "devices/detail.html", context)
    response["Cache-Control"] = "no-store"
    return response


def _command_history(device: Device) -> list[DeviceCommand]:
    """The newest commands with their delivery attempts: two queries however long the history."""
    attempts = Prefetch("delivery_attempts", queryset=DeliveryAttempt.objects.order_by("at", "id"))
    commands = list(device.commands.order_by("-seq").prefetch_related(attempts)[:COMMAND_HISTORY])
    for command in commands:
        command.status = delivery_status(command)  # type: ignore[attr-defined]  # shown by the template
    return commands


def _can_see_delivery_errors(user) -> bool:
    # Error texts describe the provider's own infrastructure (gateway addresses, HTTP
    # answers). Service-center technicians see that a push failed, not why.
    return user.organisation.kind != OrganisationKind.SERVICE_CENTER


#: The audit action of a command that could not be built (written by payments.locks.refusals).
COMMAND_REFUSED = "device.command_refused"
REFUSED_SHOWN = 50


@login_required
def dead_letters(request):
    """Commands that exhausted their push attempts, for the providers the user can see."""
    commands = scoped_list(
        with_superseded(DeviceCommand.objects.filter(dead_at__isnull=False)).select_related("device__provider"),
        request.user,
        Right.VIEW_DEVICES,
        provider_field="device__provider",
    )
    page = Paginator(commands.order_by("-dead_at", "-id"), 50).get_page(request.GET.get("page"))
    # Commands never issued because they could not be built (payments.locks.refusals: a lock screen
    # over the size a phone accepts); at most one event per phone an hour, the last week's shown.
    refused = scoped_list(
        AuditEvent.objects.filter(action=COMMAND_REFUSED, created_at__gte=timezone.now() - dt.timedelta(days=7)),
        request.user,
        Right.VIEW_DEVICES,
        provider_field="organisation",
    ).select_related("organisation")
    ctx = {
        "page": page,
        "refused": refused.order_by("-id")[:REFUSED_SHOWN],
        "can_retry": has_right(request.user, Right.MANAGE_DEVICES),
        "can_see_delivery_errors": _can_see_delivery_errors(request.user),
    }
    return render(request, "devices/dead_letters.html", ctx)


@login_required
@require_POST
def dead_letter_retry(request, pk: int):
    """Give a dead command a fresh set of attempts (audited as device.command_retry)."""
    command = scoped_get(
        DeviceCommand.objects.select_related("device__provider"),
        request.user,
        Right.MANAGE_DEVICES,
        provider_field="device__provider",
        pk=pk,
    )
    try:
        command_retry(command=command, actor=request.user, ip_address=client_ip(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Command #{command.seq} for {command.device.imei} is being delivered again.")
    return redirect("devices:dead_letters")


# --- enrolment tokens: a provider admin's settings -------------------------------------------


def _token_provider(user):
    """The provider whose enrolment tokens ``user`` manages: 403 without the right, 404 for a non-provider."""
    require(user, Right.MANAGE_SETTINGS)
    if user.organisation.kind != OrganisationKind.PROVIDER:
        raise Http404("Only a financing provider enrols phones.")
    return user.organisation


@login_required
def enrollment_tokens(request):
    """List, create (the secret is shown once, on the answer to the POST) and revoke enrolment tokens."""
    provider = _token_provider(request.user)
    form = EnrollmentTokenForm(request.POST or None)
    created = secret = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        days = data.get("days")
        try:
            created, secret = enrollment_token_create(
                provider=provider,
                name=data["name"],
                shop=data.get("shop") or "",
                max_uses=data.get("max_uses"),
                expires_at=timezone.now() + dt.timedelta(days=days) if days else None,
                actor=request.user,
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            form = EnrollmentTokenForm()
    response = render(
        request,
        "devices/enrollment_tokens.html",
        {
            "org": provider,
            "form": form,
            "tokens": enrollment_tokens_of(provider),
            "created": created,
            "secret": secret,
            "now": timezone.now(),
        },
    )
    if secret:
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def enrollment_token_revoke_view(request, pk: int):
    """Revoke a token: no phone enrols with it from now on (phones already enrolled are not affected)."""
    provider = _token_provider(request.user)
    token = EnrollmentToken.objects.filter(provider=provider, pk=pk).first()
    if token is None:
        raise Http404("No such enrolment token.")
    if token.revoked_at is None:
        enrollment_token_revoke(token=token, actor=request.user, ip_address=client_ip(request))
        messages.success(request, f"Enrolment token “{token.name}” revoked: no phone enrols with it any more.")
    return redirect("devices:enrollment_tokens")
