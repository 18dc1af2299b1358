"""Staff portal pages for the device registry."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from devices.delivery import command_retry, delivery_status, with_superseded
from devices.models import DeliveryAttempt, Device, DeviceCommand, LockState
from devices.selectors import devices_by_imei
from portal.http import client_ip
from portal.models import OrganisationKind
from portal.permissions import Right, has_right, scoped_get, scoped_list

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
    page = Paginator(devices.order_by("-id"), 50).get_page(request.GET.get("page"))
    return render(request, "devices/list.html", {"page": page, "q": q, "state": state, "states": LockState.choices})


@login_required
def device_detail(request, pk: int):
    device = scoped_get(Device.objects.select_related("provider"), request.user, Right.VIEW_DEVICES, pk=pk)
    # devices knows nothing of money: the page links to the contracts page, it does not read contracts.
    ctx = {
        "device": device,
        "provider": device.provider,
        "can_see_finance": has_right(request.user, Right.VIEW_FINANCE),
        "commands": _command_history(device),
        "command_history_limit": COMMAND_HISTORY,
        "can_see_delivery_errors": _can_see_delivery_errors(request.user),
    }
    return render(request, "devices/detail.html", ctx)


def _command_history(device: Device) -> list[DeviceCommand]:
    """The newest commands with their delivery attempts: two queries however long the history."""
    attempts = Prefetch("delivery_attempts", queryset=DeliveryAttempt.objects.order_by("at", "id"))
    commands = list(device.commands.order_by("-seq").prefetch_related(attempts)[:COMMAND_HISTORY])
    for command in commands:
        command.status = delivery_status(command)
    return commands


def _can_see_delivery_errors(user) -> bool:
    # Error texts describe the provider's own infrastructure (gateway addresses, HTTP
    # answers). Service-center technicians see that a push failed, not why.
    return user.organisation.kind != OrganisationKind.SERVICE_CENTER


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
    ctx = {
        "page": page,
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
