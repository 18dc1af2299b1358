"""The per-provider dashboard: lock states, lock activity, unlock latency, unmatched payments, cases.

Who sees what: the signed-in user's own provider for its staff with ``VIEW_FINANCE``
(admins, agents, finance officers, auditors); a platform operator (or another actor
whose scope spans several providers) picks one with ``?provider=<slug>`` among those
in scope. Another provider's slug is 404, never its data; a role without the right
(a technician) is 403. The charts are SVG built in :mod:`dashboard.charts` from
escaped parts; every figure is also in a plain table.
"""

from __future__ import annotations

import csv
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from dashboard import charts, selectors
from portal.models import Organisation, OrganisationKind, Role
from portal.permissions import Right, has_right, visible_provider_ids

_STATE_COLORS = {
    "unlocked": "#14532d",
    "reminder": "#b45309",
    "locked": "#8f1c16",
    "temp_unlocked": "#6b21a8",
    "released": "#0b5cad",
    "": "#4f5766",
}
_LOCKS_COLOR, _UNLOCKS_COLOR = "#8f1c16", "#14532d"


def _may_view(user) -> bool:
    return has_right(user, Right.VIEW_FINANCE) or user.role in (Role.PROVIDER_ADMIN, Role.OPERATOR)


def dashboard_provider(request) -> tuple[Organisation | None, list[Organisation]]:
    """The provider whose dashboard ``request.user`` asked for, and the providers it may pick from.

    403 without the right; 404 for a slug outside the user's scope. ``(None, choices)``
    when a multi-provider user has not picked yet.
    """
    user = request.user
    if not _may_view(user):
        raise PermissionDenied("Your role does not allow this (view_finance).")
    slug = request.GET.get("provider", "").strip()
    org = user.organisation
    if org.kind == OrganisationKind.PROVIDER:
        if slug and slug != org.slug:
            raise Http404("No such provider.")
        return org, []
    providers = Organisation.objects.filter(kind=OrganisationKind.PROVIDER).order_by("name")
    ids = visible_provider_ids(user)
    if ids is not None:
        providers = providers.filter(pk__in=ids)
    choices = list(providers)
    if slug:
        for provider in choices:
            if provider.slug == slug:
                return provider, choices
        raise Http404("No such provider.")
    if len(choices) == 1:
        return choices[0], choices
    return None, choices


def _day_label(day) -> str:
    return f"{day:%d %b}"


@login_required
def dashboard(request):
    provider, choices = dashboard_provider(request)
    context: dict[str, Any] = {"provider": provider, "choices": choices}
    if provider is None:
        return render(request, "dashboard/dashboard.html", context)

    now = timezone.now()
    window = selectors.window_for(provider, now=now)
    states = selectors.device_states(provider)
    activity = selectors.lock_activity(provider, window)
    latency = selectors.unlock_latency(provider, window)
    unmatched = selectors.unmatched_ages(provider, now=now)
    sla = selectors.case_sla(provider)

    day_labels = [_day_label(a.day) for a in activity]
    context |= {
        "window": window,
        "now": now,
        "states": states,
        "activity": activity,
        "activity_totals": {"locks": sum(a.locks for a in activity), "unlocks": sum(a.unlocks for a in activity)},
        "latency": latency,
        "latency_figures": {
            "median": selectors.format_duration(latency.median),
            "p95": selectors.format_duration(latency.p95),
        },
        "latency_days": [
            (d, selectors.format_duration(d.median), selectors.format_duration(d.p95))
            for d in latency.daily
            if d.cleared
        ],
        "unmatched": unmatched,
        "sla_rows": selectors.case_sla_rows(sla),
        # SVG strings built by dashboard.charts from escaped parts only (rendered with |safe).
        "chart_states": charts.bar_chart(
            "Devices by desired state",
            [(label, n) for _s, label, n in states.desired],
            colors=[_STATE_COLORS[s] for s, _l, _n in states.desired],
        ),
        "chart_reported": charts.bar_chart(
            "Devices by reported state",
            [(label, n) for _s, label, n in states.reported],
            colors=[_STATE_COLORS.get(s, "#4f5766") for s, _l, _n in states.reported],
        ),
        "chart_activity": charts.stacked_bar_chart(
            f"Locks and unlocks per day ({window.zone_name})",
            day_labels,
            [("Locks", [a.locks for a in activity]), ("Unlocks", [a.unlocks for a in activity])],
            colors=[_LOCKS_COLOR, _UNLOCKS_COLOR],
            label_every=5,
        ),
        "chart_latency": charts.line_chart(
            "Median minutes from cleared arrears to acknowledged unlock, per day",
            [
                (label, None if d.median is None else d.median / 60)
                for label, d in zip(day_labels, latency.daily, strict=True)
            ],
            unit="min",
            label_every=5,
            empty_message="No acknowledged unlock in these 30 days",
        ),
        "chart_unmatched": charts.bar_chart(
            "Unmatched payments by age",
            [(label, n) for _k, label, n in unmatched.buckets],
            colors=["#0b5cad", "#4f5766", "#b45309", "#8f1c16"],
            empty_message="No unmatched payment",
        ),
    }
    numeric = [
        (label, value)
        for label, value in context["sla_rows"]
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    if numeric:
        context["chart_sla"] = charts.bar_chart("Cases against SLA", numeric, integer=False)
    return render(request, "dashboard/dashboard.html", context)


@login_required
def dashboard_daily_csv(request):
    """The per-day series of the last 30 days as CSV (same scope rules as the page)."""
    provider, _choices = dashboard_provider(request)
    if provider is None:
        raise Http404("Pick a provider.")
    window = selectors.window_for(provider)
    rows = selectors.daily_series(selectors.lock_activity(provider, window), selectors.unlock_latency(provider, window))
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="finlock-{provider.slug}-daily-{window.last}.csv"'
    writer = csv.writer(response)
    writer.writerow([f"date ({window.zone_name})", *list(rows[0])[1:]] if rows else ["date"])
    for row in rows:
        writer.writerow(
            [
                row["day"].isoformat(),
                row["locks"],
                row["unlocks"],
                row["arrears_cleared"],
                row["unlocks_acknowledged"],
                "" if row["median_seconds"] is None else f"{row['median_seconds']:.0f}",
                "" if row["p95_seconds"] is None else f"{row['p95_seconds']:.0f}",
            ]
        )
    return response
