"""The per-provider dashboard: figures match the data, tenants never mix, queries stay constant, SVG is safe."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from dashboard import charts
from dashboard import selectors as dashboards
from devices.models import Device
from payments.ledger.services import payment_ingest
from payments.locks.services import lock_sweep
from payments.models import Contract, LockPolicy
from support.services.cases import case_assign, case_open, case_resolve
from tests.factories import DeviceFactory, make_command, make_contract

URL = "/dashboard/"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def local_noon(provider, days_ago: int) -> dt.datetime:
    """Noon, local time, ``days_ago`` days before the provider's today (far from any day boundary)."""
    day = provider.today() - dt.timedelta(days=days_ago)
    return dt.datetime.combine(day, dt.time(12), tzinfo=provider.zone)


class _Tables(HTMLParser):
    """Rows of every ``<table id=...>``: {table id: {row key: [cell texts]}}; the key is a row's data-* value."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, dict[str, list[str]]] = {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], {})
        elif tag == "tr" and self._table is not None:
            keys = [v for k, v in attrs.items() if k.startswith("data-")]
            self._row = (keys[0] if keys else f"row{len(self._table)}", [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row[1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table[self._row[0]] = self._row[1]
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(response) -> dict[str, dict[str, list[str]]]:
    parser = _Tables()
    parser.feed(response.content.decode())
    return parser.tables


def page(as_user, user, **params):
    response = as_user(user).get(URL, params)
    assert response.status_code == 200, response.status_code
    return response


# --- 1. devices by state ------------------------------------------------------------------------


def test_devices_by_state_counts_desired_and_reported(as_user, finance_a, provider_a, provider_b):
    for _ in range(3):
        DeviceFactory(provider=provider_a, desired_state="locked", reported_state="locked")
    DeviceFactory(provider=provider_a, desired_state="unlocked", reported_state="locked")  # unlock on its way
    DeviceFactory(provider=provider_a, desired_state="unlocked", reported_state="")  # never checked in
    for _ in range(7):
        DeviceFactory(provider=provider_b, desired_state="locked", reported_state="locked")

    response = page(as_user, finance_a)

    rows = tables(response)["table-states"]
    assert rows["locked"][1:] == ["3", "4"]  # desired, reported
    assert rows["unlocked"][1:] == ["2", "0"]
    assert rows["reminder"][1:] == ["0", "0"]
    assert rows[""][1:] == ["—", "1"]
    states = response.context["states"]
    assert (states.total, states.out_of_sync, states.never_reported) == (5, 2, 1)
    assert 'aria-label="Devices by desired state. Bar chart. Unlocked: 2; Reminder: 0; Locked: 3;' in (
        response.content.decode()
    )


# --- 2. locks and unlocks per day ---------------------------------------------------------------


def test_locks_and_unlocks_per_local_day(as_user, agent_a, provider_a, provider_b, key):
    devices = [DeviceFactory(provider=provider_a) for _ in range(4)]
    two_days_ago, yesterday = local_noon(provider_a, 2), local_noon(provider_a, 1)
    for device in devices[:3]:
        make_command(device, private_key=key, state="locked", issued_at=two_days_ago)
    make_command(devices[0], private_key=key, state="unlocked", issued_at=yesterday)
    make_command(devices[1], private_key=key, state="temp_unlocked", issued_at=yesterday)
    make_command(devices[2], private_key=key, state="released", issued_at=yesterday)
    make_command(devices[3], private_key=key, state="reminder", issued_at=yesterday)  # neither
    make_command(devices[3], private_key=key, state="locked", issued_at=local_noon(provider_a, 31))  # too old
    # 20:00 UTC is already the next day in Colombo (UTC+05:30): counted on that local day.
    late = dt.datetime.combine(provider_a.today() - dt.timedelta(days=4), dt.time(20), tzinfo=dt.UTC)
    make_command(devices[3], private_key=key, state="locked", issued_at=late)
    other = DeviceFactory(provider=provider_b)
    for _ in range(5):
        make_command(other, private_key=key, state="locked", issued_at=two_days_ago)

    response = page(as_user, agent_a)

    rows = tables(response)["table-activity"]
    assert len([k for k in rows if k[:1].isdigit()]) == 30  # one row a day, every day
    day = lambda n: (provider_a.today() - dt.timedelta(days=n)).isoformat()  # noqa: E731
    assert rows[day(2)][1:] == ["3", "0"]
    assert rows[day(1)][1:] == ["0", "3"]
    assert rows[day(3)][1:] == ["1", "0"]
    assert rows[day(4)][1:] == ["0", "0"]
    assert response.context["activity_totals"] == {"locks": 4, "unlocks": 3}
    svg = ET.fromstring(response.context["chart_activity"])
    tooltips = [t.text for t in svg.iter(f"{SVG}title")]
    assert any(t.endswith(": Locks 3") for t in tooltips) and any(t.endswith(": Unlocks 3") for t in tooltips)


# --- 3. cleared arrears → acknowledged unlock ----------------------------------------------------


def _cleared(provider, key, *, cleared_at, ack_after: float | None, issue_delay: float = 0.0):
    """A contract whose arrears were cleared at ``cleared_at``, its lock before it and its unlock command after it."""
    contract = make_contract(provider)
    device = contract.device
    make_command(device, private_key=key, state="locked", issued_at=cleared_at - dt.timedelta(days=3))
    issued = (cleared_at + dt.timedelta(seconds=issue_delay)).replace(microsecond=0)
    acknowledged = None if ack_after is None else cleared_at + dt.timedelta(seconds=ack_after)
    make_command(device, private_key=key, state="unlocked", issued_at=issued, acknowledged_at=acknowledged)
    Contract.objects.filter(pk=contract.pk).update(arrears_cleared_at=cleared_at)
    return contract


def test_median_and_p95_from_known_acknowledgement_delays(as_user, admin_a, provider_a, provider_b, key):
    base = local_noon(provider_a, 3)
    for i, delay in enumerate([60, 120, 180, 240, 600]):
        # The clearing has microseconds, the command's issued_at is whole seconds and may
        # fall a fraction of a second *before* it: it is still this clearing's command.
        _cleared(provider_a, key, cleared_at=base + dt.timedelta(minutes=i, microseconds=700_000), ack_after=delay)
    _cleared(provider_a, key, cleared_at=base, ack_after=None)  # the phone has not acknowledged yet
    _cleared(provider_a, key, cleared_at=local_noon(provider_a, 40), ack_after=5)  # outside the window
    # An unlock acknowledged long before the clearing (an earlier episode) is not this clearing's unlock.
    earlier = make_contract(provider_a)
    make_command(
        earlier.device,
        private_key=key,
        state="unlocked",
        issued_at=base - dt.timedelta(days=10),
        acknowledged_at=base - dt.timedelta(days=10),
    )
    make_command(earlier.device, private_key=key, state="locked", issued_at=base - dt.timedelta(days=5))
    Contract.objects.filter(pk=earlier.pk).update(arrears_cleared_at=base)  # unlock not issued yet: pending
    _cleared(provider_b, key, cleared_at=local_noon(provider_b, 3), ack_after=86_400)

    response = page(as_user, admin_a)

    latency = response.context["latency"]
    assert (latency.cleared, latency.acknowledged, latency.pending) == (7, 5, 2)
    assert latency.median == pytest.approx(180)
    assert latency.p95 == pytest.approx(528)  # 240 + 0.8 × (600 − 240), as percentile_cont interpolates
    body = response.content.decode()
    assert '<dd data-figure="median">3 min 00 s</dd>' in body
    assert '<dd data-figure="p95">8 min 48 s</dd>' in body
    day = (provider_a.today() - dt.timedelta(days=3)).isoformat()
    assert tables(response)["table-latency"][day][1:] == ["7", "5", "3 min 00 s", "8 min 48 s"]
    line = ET.fromstring(response.context["chart_latency"])
    assert [c.find(f"{SVG}title").text for c in line.iter(f"{SVG}circle")] == [
        f"{(provider_a.today() - dt.timedelta(days=3)):%d %b}: 3 min"
    ]


def test_a_relock_ends_the_search_for_the_unlock(provider_a, key):
    base = local_noon(provider_a, 2)
    contract = _cleared(provider_a, key, cleared_at=base, ack_after=None)
    make_command(contract.device, private_key=key, state="locked", issued_at=base + dt.timedelta(days=1))
    make_command(
        contract.device,
        private_key=key,
        state="unlocked",
        issued_at=base + dt.timedelta(days=1, hours=1),
        acknowledged_at=base + dt.timedelta(days=1, hours=2),
    )
    latency = dashboards.unlock_latency(provider_a, dashboards.window_for(provider_a))
    assert (latency.cleared, latency.acknowledged, latency.median) == (1, 0, None)


def test_the_real_pipeline_payment_unlock_and_ack_is_measured(as_user, finance_a, provider_a):
    """A payment clears the arrears (payment_ingest), the phone acknowledges the unlock (device_ack)."""
    from devices.services.checkin import device_ack

    LockPolicy.objects.create(provider=provider_a, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    contract = make_contract(provider_a, number="DLG-100", first_due_date=provider_a.today() - dt.timedelta(days=40))
    lock_sweep()
    payment_ingest(
        provider=provider_a,
        channel="mobile_money",
        external_id="TX-PAID",
        amount=Decimal("16666.66"),
        currency="LKR",
        received_at=timezone.now() - dt.timedelta(minutes=5),
        reference="DLG-100",
    )
    contract.refresh_from_db()
    assert contract.lock_state == "unlocked" and contract.arrears_cleared_at is not None

    latency = page(as_user, finance_a).context["latency"]
    assert (latency.cleared, latency.acknowledged, latency.pending) == (1, 0, 1)

    device = Device.objects.get(pk=contract.device_id)
    assert device_ack(device=device, seq=device.command_seq, state="unlocked")
    latency = page(as_user, finance_a).context["latency"]
    assert (latency.cleared, latency.acknowledged, latency.pending) == (1, 1, 0)
    assert 0 <= latency.median < 60


def test_percentile_cont_matches_postgresql():
    assert dashboards.percentile_cont([], 0.5) is None
    assert dashboards.percentile_cont([7.0], 0.95) == 7.0
    assert dashboards.percentile_cont([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert dashboards.percentile_cont([60, 120, 180, 240, 600], 0.95) == pytest.approx(528)


# --- 4. unmatched payments by age ---------------------------------------------------------------


def _unmatched(provider, external_id, *, age: dt.timedelta):
    payment, _created = payment_ingest(
        provider=provider,
        channel="bank_transfer",
        external_id=external_id,
        amount=Decimal("1000.00"),
        currency=provider.currency,
        received_at=timezone.now() - age,
        reference="no idea",
        auto_match=False,
    )
    assert payment.status == "unmatched"
    return payment


def test_unmatched_payments_by_age_bucket(as_user, finance_a, provider_a, provider_b):
    _unmatched(provider_a, "A-2D", age=dt.timedelta(days=2))
    _unmatched(provider_a, "A-5D", age=dt.timedelta(days=5))
    _unmatched(provider_b, "B-1", age=dt.timedelta(hours=2))
    _unmatched(provider_b, "B-2", age=dt.timedelta(days=9))

    response = page(as_user, finance_a)

    rows = tables(response)["table-unmatched"]
    assert {k: rows[k][1] for k in ("lt1", "d1_3", "d3_7", "gt7")} == {"lt1": "0", "d1_3": "1", "d3_7": "1", "gt7": "0"}
    assert response.context["unmatched"].total == 2
    assert '<span class="stat stat-bad" data-figure="unmatched-total">2</span>' in response.content.decode()


def test_bucket_edges_include_their_lower_bound(provider_a):
    now = timezone.now()
    for n, age in enumerate([dt.timedelta(hours=23), dt.timedelta(days=1), dt.timedelta(days=3), dt.timedelta(days=7)]):
        payment_ingest(
            provider=provider_a,
            channel="cash_agent",
            external_id=f"E{n}",
            amount=Decimal("1.00"),
            currency="LKR",
            received_at=now - age,
            auto_match=False,
        )
    ages = dashboards.unmatched_ages(provider_a, now=now)
    assert [n for _k, _l, n in ages.buckets] == [1, 1, 1, 1]


# --- 5. cases against SLA -----------------------------------------------------------------------


def _case(provider, agent, category: str, *, opened_ago: dt.timedelta, resolved_after: dt.timedelta | None = None):
    """A case opened ``opened_ago`` before now through the support services, resolved ``resolved_after`` it opened."""
    opened_at = timezone.now() - opened_ago
    case = case_open(
        provider=provider,
        device=DeviceFactory(provider=provider),
        category=category,
        opened_by=agent,
        summary="Paid yesterday, phone still locked",
        now=opened_at,
    )
    if resolved_after is not None:
        case_resolve(
            case=case, actor=agent, resolution="resolved_unlocked", note="Unlocked.", now=opened_at + resolved_after
        )
    return case


def _sla_cases(provider, agent) -> None:
    """Open: one overdue, one due within the hour, one due in days; resolved in 30 days: two in time, one late."""
    hour = dt.timedelta(hours=1)
    _case(provider, agent, "paid_but_locked", opened_ago=5 * hour)  # 4 h SLA: due an hour ago
    _case(provider, agent, "paid_but_locked", opened_ago=3.5 * hour)  # due in 30 minutes
    later = _case(provider, agent, "dispute", opened_ago=hour)  # 72 h SLA: due in 71 hours
    case_assign(case=later, assignee=agent, actor=agent)  # assigned or not, it is open
    _case(provider, agent, "locked_in_error", opened_ago=48 * hour, resolved_after=3 * hour)  # 8 h SLA: in time
    _case(provider, agent, "paid_but_locked", opened_ago=72 * hour, resolved_after=4 * hour)  # at its due time
    _case(provider, agent, "paid_but_locked", opened_ago=96 * hour, resolved_after=6 * hour)  # 2 h late
    _case(provider, agent, "paid_but_locked", opened_ago=40 * 24 * hour, resolved_after=6 * hour)  # late, too old


def test_cases_against_sla_count_the_providers_real_cases(as_user, finance_a, agent_a, agent_b, provider_a, provider_b):
    _sla_cases(provider_a, agent_a)
    hour = dt.timedelta(hours=1)
    _case(provider_b, agent_b, "paid_but_locked", opened_ago=5 * hour)  # another provider's: never counted for A
    _case(provider_b, agent_b, "paid_but_locked", opened_ago=3.5 * hour)
    _case(provider_b, agent_b, "paid_but_locked", opened_ago=24 * hour, resolved_after=7 * hour)

    response = page(as_user, finance_a)

    rows = tables(response)["table-cases"]
    assert list(rows.values()) == [
        ["Open", "3"],
        ["Overdue", "1"],
        ["Due within an hour", "1"],
        ["Resolved in time 30 days", "2"],
        ["Resolved late 30 days", "1"],
    ]
    svg = ET.fromstring(response.context["chart_sla"])
    assert svg.get("aria-label").startswith(
        "Cases against SLA. Bar chart. Open: 3; Overdue: 1; Due within an hour: 1; "
        "Resolved in time 30 days: 2; Resolved late 30 days: 1"
    )

    rows = tables(page(as_user, agent_b))["table-cases"]
    assert list(rows.values()) == [
        ["Open", "2"],
        ["Overdue", "1"],
        ["Due within an hour", "1"],
        ["Resolved in time 30 days", "0"],
        ["Resolved late 30 days", "1"],
    ]


def test_cases_against_sla_are_zero_without_cases_of_ones_own(as_user, finance_a, agent_b, provider_a, provider_b):
    _sla_cases(provider_b, agent_b)  # all another provider's

    response = page(as_user, finance_a)

    rows = tables(response)["table-cases"]
    assert list(rows.values()) == [
        ["Open", "0"],
        ["Overdue", "0"],
        ["Due within an hour", "0"],
        ["Resolved in time 30 days", "0"],
        ["Resolved late 30 days", "0"],
    ]
    assert response.context["sla_rows"] == [
        ("Open", 0),
        ("Overdue", 0),
        ("Due within an hour", 0),
        ("Resolved in time 30 days", 0),
        ("Resolved late 30 days", 0),
    ]
    assert "Nothing to show yet" in response.context["chart_sla"]


# --- who sees what --------------------------------------------------------------------------------


def test_provider_b_never_appears_for_a(as_user, agent_a, agent_b, provider_a, provider_b, key):
    for _ in range(2):
        DeviceFactory(provider=provider_a, desired_state="locked")
    for _ in range(6):
        make_command(DeviceFactory(provider=provider_b), private_key=key, state="locked")
    _unmatched(provider_b, "B-ONLY", age=dt.timedelta(days=2))

    response = page(as_user, agent_a)
    assert response.context["provider"] == provider_a
    assert response.context["states"].total == 2
    assert response.context["activity_totals"] == {"locks": 0, "unlocks": 0}
    assert response.context["unmatched"].total == 0
    assert "Jamii" not in response.content.decode()

    assert as_user(agent_a).get(URL, {"provider": "jamii"}).status_code == 404
    assert as_user(agent_a).get(reverse("dashboard:daily_csv"), {"provider": "jamii"}).status_code == 404
    assert page(as_user, agent_a, provider="dialog").context["provider"] == provider_a

    response = page(as_user, agent_b)
    assert response.context["provider"] == provider_b
    assert response.context["states"].total == 6 and response.context["activity_totals"]["locks"] == 6


@pytest.mark.parametrize("persona", ["admin_a", "finance_a", "agent_a", "auditor_a"])
def test_provider_staff_with_finance_rights_see_their_dashboard(request, as_user, persona, provider_a):
    assert page(as_user, request.getfixturevalue(persona)).context["provider"] == provider_a


def test_technician_is_refused(as_user, technician, provider_a):
    client = as_user(technician)
    assert client.get(URL).status_code == 403
    assert client.get(URL, {"provider": "dialog"}).status_code == 403
    assert client.get(reverse("dashboard:daily_csv")).status_code == 403


def test_anonymous_is_sent_to_sign_in(client):
    response = client.get(URL)
    assert response.status_code == 302 and "login" in response["Location"]


def test_operator_picks_a_provider(as_user, operator, provider_a, provider_b):
    DeviceFactory(provider=provider_b, desired_state="locked")

    response = page(as_user, operator)
    assert response.context["provider"] is None
    assert [p.slug for p in response.context["choices"]] == ["dialog", "jamii"]
    assert "Choose a provider" in response.content.decode()

    response = page(as_user, operator, provider="jamii")
    assert response.context["provider"] == provider_b and response.context["states"].total == 1
    assert as_user(operator).get(URL, {"provider": "no-such"}).status_code == 404


# --- query count ---------------------------------------------------------------------------------


def _grow(provider, key, n: int) -> None:
    base = local_noon(provider, 2)
    for i in range(n):
        device = DeviceFactory(provider=provider, desired_state="locked", reported_state="locked")
        make_command(device, private_key=key, state="locked", issued_at=base)
        if i % 2:
            _cleared(provider, key, cleared_at=base + dt.timedelta(hours=1), ack_after=60 + i)
        _unmatched(provider, f"G{n}-{i}", age=dt.timedelta(days=i % 10, hours=1))


def test_query_count_does_not_grow_with_the_data(as_user, admin_a, provider_a, key, django_assert_max_num_queries):
    client = as_user(admin_a)
    _grow(provider_a, key, 5)
    client.get(URL)  # warm the session and caches
    with CaptureQueriesContext(connection) as small:
        assert client.get(URL).status_code == 200

    _grow(provider_a, key, 45)
    assert Device.objects.filter(provider=provider_a).count() >= 50
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = client.get(URL)
    assert response.context["states"].total >= 50
    # Besides the session, the user, its two-factor device and organisation: four aggregate reads.
    reads = [q["sql"] for q in small.captured_queries if '"devices_' in q["sql"] or '"payments_' in q["sql"]]
    assert len(reads) == 4, "\n".join(reads)
    assert len(small.captured_queries) <= 12, "\n".join(q["sql"][:120] for q in small.captured_queries)


# --- CSV -----------------------------------------------------------------------------------------


def test_daily_csv(as_user, finance_a, provider_a, key):
    make_command(
        DeviceFactory(provider=provider_a), private_key=key, state="locked", issued_at=local_noon(provider_a, 1)
    )
    response = as_user(finance_a).get(reverse("dashboard:daily_csv"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    lines = response.content.decode().splitlines()
    assert lines[0] == (
        "date (Asia/Colombo),locks,unlocks,arrears_cleared,unlocks_acknowledged,median_seconds,p95_seconds"
    )
    assert len(lines) == 31
    yesterday = (provider_a.today() - dt.timedelta(days=1)).isoformat()
    assert f"{yesterday},1,0,0,0,," in lines


# --- SVG -----------------------------------------------------------------------------------------


def test_svg_escapes_text_and_parses_as_xml():
    evil = '<script>alert("x")</script>'
    outputs = [
        charts.bar_chart(evil, [(evil, 3), ("a & b", 1), ("it's", 0)], unit=evil),
        charts.stacked_bar_chart(evil, [evil, "b"], [(evil, [1, 2]), ("Unlocks", [0, 4])]),
        charts.line_chart(evil, [(evil, 1.5), ("gap", None), ("c", 2.0), ("d", 4.25)], unit="min"),
    ]
    for svg in outputs:
        assert "<script" not in svg and "&lt;script&gt;" in svg
        root = ET.fromstring(svg)  # well-formed XML
        assert root.tag == f"{SVG}svg"
        assert root.get("role") == "img" and root.get("aria-label", "").startswith(evil)
        assert root.find(f"{SVG}title").text == evil
        assert "style" not in svg and "<foreignObject" not in svg
    bars = ET.fromstring(outputs[0])
    tooltips = [rect.find(f"{SVG}title").text for rect in bars.iter(f"{SVG}rect")]
    assert tooltips == [f"{evil}: 3 {evil}", f"a & b: 1 {evil}", f"it's: 0 {evil}"]


def test_svg_output_is_deterministic_and_handles_no_data():
    args = ("Locks", ["1 Jan", "2 Jan"], [("Locks", [3, 0]), ("Unlocks", [1, 2])])
    assert charts.stacked_bar_chart(*args) == charts.stacked_bar_chart(*args)
    for svg in (
        charts.bar_chart("Empty", []),
        charts.bar_chart("Zeros", [("a", 0)]),
        charts.line_chart("Gaps", [("a", None), ("b", None)]),
        charts.stacked_bar_chart("None", [], []),
    ):
        root = ET.fromstring(svg)
        assert "Nothing to show yet" in "".join(root.itertext())
    line = ET.fromstring(charts.line_chart("L", [("a", 1), ("b", 2), ("c", None), ("d", 3), ("e", 4)]))
    assert len(list(line.iter(f"{SVG}path"))) == 2  # the gap splits the line, it is not drawn as zero
    with pytest.raises(ValueError):
        charts.stacked_bar_chart("Bad", ["a", "b"], [("x", [1])])


def test_axis_ticks_are_round():
    assert charts.axis_ticks(0) == [0, 1]
    assert charts.axis_ticks(3) == [0, 1, 2, 3]
    assert charts.axis_ticks(47) == [0, 20, 40, 60]
    assert charts.axis_ticks(9.5, integer=False) == [0, 2.5, 5, 7.5, 10]


@pytest.mark.postgres
def test_postgresql_lateral_join_agrees_with_the_portable_join(provider_a, key):
    """PostgreSQL's LATERAL + percentile_cont statement gives what the ORM join + Python percentiles give."""
    base = local_noon(provider_a, 4)
    for i, delay in enumerate([30, 90, 400, None, 7200]):
        _cleared(
            provider_a,
            key,
            cleared_at=base + dt.timedelta(days=i % 3, seconds=i, microseconds=250_000),
            ack_after=delay,
        )
    relocked = _cleared(provider_a, key, cleared_at=base, ack_after=None)
    make_command(relocked.device, private_key=key, state="locked", issued_at=base + dt.timedelta(hours=5))
    make_command(
        relocked.device,
        private_key=key,
        state="unlocked",
        issued_at=base + dt.timedelta(hours=6),
        acknowledged_at=base + dt.timedelta(hours=7),
    )
    window = dashboards.window_for(provider_a)

    lateral = sorted(dashboards._latency_rows_postgresql(provider_a, window), key=str)
    portable = sorted(
        dashboards._latency_rows_python(dashboards.unlock_acknowledgements(provider_a, window), provider_a), key=str
    )
    assert [r[:3] for r in lateral] == [r[:3] for r in portable]
    for a, b in zip(lateral, portable, strict=True):
        assert a[3:] == pytest.approx(b[3:])
    assert any(r[0] is None and r[1:3] == (6, 4) for r in lateral)
