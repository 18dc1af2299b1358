"""Staff portal pages for the device registry."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render

from devices.models import Device, LockState
from devices.selectors import devices_by_imei
from portal.permissions import Right, has_right, scoped_get, scoped_list


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
    }
    return render(request, "devices/detail.html", ctx)
