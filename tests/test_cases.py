"""Hotline cases: an agent opens a case from a call, verifies the caller, works it and resolves it.

Stories:
* an owner calls: "I paid and my phone is still locked". The agent opens a case from the
  device (or the contract); it is due within the category's SLA;
* until the caller's identity is verified the case page shows the phone's state and the
  checklist, never amounts or payments; a failed check is recorded;
* the queue puts the most urgent first and flags overdue cases with a clear badge; it filters
  mine / unassigned / category and runs the same queries for 3 or 10 cases;
* notes, assignment, verification and resolution land on the timeline and in the audit trail;
* provider B's agent gets 404 on every page of provider A's case; a technician gets 403.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from payments.ledger.services import payment_ingest
from portal.models import AuditEvent
from support.models import SLA_HOURS, Case, CaseEvent
from support.services.cases import case_assign, case_open, case_resolve, case_verify_identity
from tests.factories import DeviceFactory, make_contract

ALL_CHECKS = ["full_name", "national_id_last4", "contract_phone"]


@pytest.fixture
def contract(provider_a):
    """Six monthly installments of LKR 8,333.33 from 15 Jan 2026; the owner paid two of them."""
    contract = make_contract(provider_a, number="DLG-100")
    payment_ingest(
        provider=provider_a,
        channel="mobile_money",
        external_id="QK7H2ABC",
        amount=Decimal("16666.66"),
        currency="LKR",
        received_at=timezone.now() - dt.timedelta(days=1),
        reference="DLG-100",
    )
    return contract


def open_case(contract, agent, category="paid_but_locked", **fields):
    return case_open(
        provider=contract.provider,
        device=contract.device,
        category=category,
        opened_by=agent,
        summary="Paid yesterday by eZ Cash, phone still locked",
        **fields,
    )


def test_a_case_opened_from_the_device_is_about_its_contract_and_due_within_the_sla(contract, agent_a):
    opened_at = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)
    case = open_case(contract, agent_a, now=opened_at)
    assert case.contract == contract and case.device == contract.device and case.status == "open"
    assert (
        case.sla_due_at
        == opened_at + dt.timedelta(hours=4)
        == opened_at + dt.timedelta(hours=SLA_HOURS["paid_but_locked"])
    )
    dispute = open_case(contract, agent_a, category="dispute", now=opened_at)
    assert dispute.sla_due_at == opened_at + dt.timedelta(hours=72)
    assert CaseEvent.objects.filter(case=case, kind="opened").exists()
    assert AuditEvent.objects.filter(action="case.open", object_id=str(case.pk), actor=agent_a).exists()


def test_a_case_needs_a_phone_or_contract_of_the_provider(contract, agent_a, provider_b):
    with pytest.raises(ValidationError):
        case_open(provider=contract.provider, category="other", opened_by=agent_a, summary="?")
    foreign = DeviceFactory(provider=provider_b)
    with pytest.raises(ValidationError) as exc:
        case_open(provider=contract.provider, device=foreign, category="other", opened_by=agent_a, summary="?")
    assert "Not a device of this provider" in str(exc.value)
    other_phone = DeviceFactory(provider=contract.provider)
    with pytest.raises(ValidationError) as exc:
        case_open(
            provider=contract.provider,
            device=other_phone,
            contract=contract,
            category="other",
            opened_by=agent_a,
            summary="?",
        )
    assert "another phone" in str(exc.value)


def test_the_open_case_form_is_prefilled_from_a_device_or_a_contract(contract, agent_a, as_user):
    client = as_user(agent_a)
    by_device = client.get(reverse("support:case_new"), {"device": contract.device_id}).content.decode()
    assert f'value="{contract.device.imei}"' in by_device
    by_contract = client.get(reverse("support:case_new"), {"contract": contract.pk}).content.decode()
    assert 'value="DLG-100"' in by_contract
    response = client.post(
        reverse("support:case_new"),
        {"contract_number": "dlg 100", "category": "paid_but_locked", "channel": "hotline", "summary": "Paid"},
    )
    case = Case.objects.get()
    assert response.url == reverse("support:case", args=[case.pk])
    assert case.contract == contract and case.device_id == contract.device_id and case.opened_by == agent_a


def test_an_unknown_imei_is_explained_on_the_form(contract, agent_a, as_user):
    response = as_user(agent_a).post(
        reverse("support:case_new"),
        {"imei": "490154203237518", "category": "other", "channel": "hotline", "summary": "?"},
    )
    assert "No phone of yours has this IMEI" in response.content.decode() and not Case.objects.exists()


def test_money_stays_hidden_until_the_caller_is_verified(contract, agent_a, as_user):
    case = open_case(contract, agent_a)
    client = as_user(agent_a)
    url = reverse("support:case", args=[case.pk])
    before = client.get(url).content.decode()
    # The phone's state and the checklist, nothing about money.
    assert contract.device.imei in before and "Caller's identity" in before
    assert 'name="checks" value="full_name"' in before
    for money in ("33,333.34", "16,666.66", "50,000.00", "8,333.33", "QK7H2ABC", "Balance", "Overdue now"):
        assert money not in before, money

    # Two of three checks: still not verified, and the attempt is on record.
    client.post(reverse("support:case_verify", args=[case.pk]), {"checks": ["full_name", "contract_phone"]})
    partial = client.get(url).content.decode()
    assert "33,333.34" not in partial and "QK7H2ABC" not in partial
    assert CaseEvent.objects.filter(case=case, kind="identity_failed").exists()
    assert AuditEvent.objects.filter(action="case.identity_failed", object_id=str(case.pk)).exists()

    response = client.post(reverse("support:case_verify", args=[case.pk]), {"checks": ALL_CHECKS}, follow=True)
    after = response.content.decode()
    assert "Caller verified" in after
    assert "33,333.34" in after and "QK7H2ABC" in after and "16,666.66" in after
    case.refresh_from_db()
    assert case.identity_checks == ALL_CHECKS and case.identity_verified_by == agent_a
    assert AuditEvent.objects.filter(action="case.identity_verified", object_id=str(case.pk)).exists()


def test_the_queue_flags_overdue_cases_most_urgent_first(contract, agent_a, as_user):
    late = open_case(contract, agent_a, now=timezone.now() - dt.timedelta(hours=5))  # 4 h SLA: 1 h late
    fresh = open_case(contract, agent_a, category="dispute")
    page = as_user(agent_a).get(reverse("support:cases")).content.decode()
    assert page.count('<span class="badge badge-bad">Overdue</span>') == 1
    assert page.count('class="row-alert"') == 1
    assert page.index(f"#{late.pk}<") < page.index(f"#{fresh.pk}<")
    detail = as_user(agent_a).get(reverse("support:case", args=[late.pk])).content.decode()
    assert '<span class="badge badge-bad">Overdue</span>' in detail
    assert "Overdue" not in as_user(agent_a).get(reverse("support:case", args=[fresh.pk])).content.decode()


def test_the_queue_filters_mine_unassigned_and_category(contract, agent_a, admin_a, as_user):
    mine = open_case(contract, agent_a, category="dispute")
    theirs = open_case(contract, agent_a, category="other")
    nobodys = open_case(contract, agent_a, category="other")
    case_assign(case=mine, assignee=agent_a, actor=agent_a)
    case_assign(case=theirs, assignee=admin_a, actor=agent_a)
    client = as_user(agent_a)

    def listed(**params):
        page = client.get(reverse("support:cases"), params).content.decode()
        return {c.pk for c in (mine, theirs, nobodys) if f"#{c.pk}<" in page}

    assert listed() == {mine.pk, theirs.pk, nobodys.pk}
    assert listed(view="mine") == {mine.pk}
    assert listed(view="unassigned") == {nobodys.pk}
    assert listed(category="other") == {theirs.pk, nobodys.pk}
    case_resolve(case=nobodys, actor=agent_a, resolution="duplicate", note="Same call as #1")
    assert listed(category="other") == {theirs.pk}
    assert listed(status="resolved") == {nobodys.pk}


def test_notes_assignment_and_resolution_form_the_timeline_and_the_audit_trail(
    contract, agent_a, admin_a, provider_b, as_user
):
    case = open_case(contract, agent_a)
    client = as_user(agent_a)
    client.post(reverse("support:case_note", args=[case.pk]), {"text": "Asked for the eZ Cash SMS"})
    client.post(reverse("support:case_assign", args=[case.pk]), {"take": "1"})
    assert Case.objects.get(pk=case.pk).assigned_to == agent_a
    client.post(reverse("support:case_assign", args=[case.pk]), {"assignee": admin_a.pk})
    assert Case.objects.get(pk=case.pk).assigned_to == admin_a
    # Nobody outside the provider's case workers can be given the case.
    from tests.factories import UserFactory

    outsider_agent = UserFactory(username="agent.b2", organisation=provider_b, role="agent")
    with pytest.raises(ValidationError):
        case_assign(case=case, assignee=outsider_agent, actor=agent_a)

    client.post(
        reverse("support:case_resolve", args=[case.pk]),
        {"resolution": "payment_found", "note": "Payment QK7H2ABC matched; phone unlocked"},
    )
    case.refresh_from_db()
    assert case.status == "resolved" and case.resolution == "payment_found" and case.resolved_by == agent_a
    page = client.get(reverse("support:case", args=[case.pk])).content.decode()
    for text in (
        "Asked for the eZ Cash SMS",
        "Assigned to agent.a",
        "Assigned to admin.a",
        "Payment found and credited",
    ):
        assert text in page
    kinds = list(CaseEvent.objects.filter(case=case).values_list("kind", flat=True))
    assert kinds == ["opened", "note", "assigned", "assigned", "resolved"]
    actions = list(
        AuditEvent.objects.filter(object_type="support.Case", object_id=str(case.pk)).values_list("action", flat=True)
    )
    assert actions == ["case.open", "case.note", "case.assign", "case.assign", "case.resolve"]

    # A second resolution is told it is done.
    with pytest.raises(ValidationError) as exc:
        case_resolve(case=case, actor=admin_a, resolution="other", note="again")
    assert "Already resolved by agent.a" in str(exc.value)


def test_identity_can_be_verified_once_and_not_on_a_resolved_case(contract, agent_a):
    case = open_case(contract, agent_a)
    assert case_verify_identity(case=case, actor=agent_a, checks=ALL_CHECKS) is True
    assert case_verify_identity(case=case, actor=agent_a, checks=[]) is True  # already verified: kept
    with pytest.raises(ValidationError):
        case_verify_identity(case=case, actor=agent_a, checks=["shoe_size"])


def test_provider_b_gets_404_on_every_page_of_provider_a_case(contract, agent_a, agent_b, as_user):
    case = open_case(contract, agent_a)
    client = as_user(agent_b)
    assert client.get(reverse("support:case", args=[case.pk])).status_code == 404
    for name, data in (
        ("support:case_note", {"text": "x"}),
        ("support:case_assign", {"take": "1"}),
        ("support:case_verify", {"checks": ALL_CHECKS}),
        ("support:case_resolve", {"resolution": "other", "note": "x"}),
    ):
        assert client.post(reverse(name, args=[case.pk]), data).status_code == 404, name
    assert client.get(reverse("support:case_new"), {"device": contract.device_id}).status_code == 404
    assert client.get(reverse("support:case_new"), {"contract": contract.pk}).status_code == 404
    assert f"#{case.pk}<" not in client.get(reverse("support:cases")).content.decode()
    case.refresh_from_db()
    assert case.status == "open" and case.assigned_to is None and not case.identity_verified


def test_a_technician_does_not_work_hotline_cases(contract, agent_a, technician, as_user):
    case = open_case(contract, agent_a)
    client = as_user(technician)
    assert client.get(reverse("support:cases")).status_code == 403
    assert client.get(reverse("support:case", args=[case.pk])).status_code == 403


def test_the_queue_runs_the_same_queries_for_3_or_10_cases(provider_a, agent_a, as_user, django_assert_max_num_queries):
    contracts = [make_contract(provider_a) for _ in range(10)]
    for c in contracts[:3]:
        open_case(c, agent_a, now=timezone.now() - dt.timedelta(hours=6))
    client = as_user(agent_a)
    url = reverse("support:cases")
    client.get(url)
    with CaptureQueriesContext(connection) as three:
        assert client.get(url).content.decode().count("Overdue</span>") == 3
    queries_for_three = len(three)  # read now: the next request clears the query log
    for c in contracts[3:]:
        case = open_case(c, agent_a)
        case_assign(case=case, assignee=agent_a, actor=agent_a)
    with django_assert_max_num_queries(queries_for_three):
        page = client.get(url).content.decode()
    assert page.count("Overdue</span>") == 3 and page.count("agent.a</td>") == 7


def test_a_case_opened_by_a_contract_number_that_fits_two_contracts_asks_for_the_exact_number(
    provider_a, agent_a, as_user
):
    make_contract(provider_a, number="DLG-01")
    newer = make_contract(provider_a, number="DLG-1")
    client = as_user(agent_a)

    ambiguous = client.post(
        reverse("support:case_new"),
        {"category": "dispute", "channel": "hotline", "summary": "Wrong amount", "contract_number": "dlg 1"},
    )
    exact = client.post(
        reverse("support:case_new"),
        {"category": "dispute", "channel": "hotline", "summary": "Wrong amount", "contract_number": "DLG-01"},
    )

    assert "Several contracts match" in ambiguous.content.decode()
    assert exact.status_code == 302
    assert Case.objects.get().contract.number == "DLG-01" != newer.number
