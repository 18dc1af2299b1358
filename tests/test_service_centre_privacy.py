"""Service-centre staff never see money or identity, whatever their role.

Stories (the security review's finding 4): a service centre's auditor — a role service centres
may give — walked the pages of the provider the centre serves and read owners' finances. Now
the one place rights are computed (``portal.permissions.rights_of``) takes every money and
identity right away from anyone in a service centre: the auditor and the technician walk
every page and see no amount, no customer name, phone number or national id; the money pages
are 403. The centre's auditor reads its own organisation's actions in the audit trail, never
an event about a contract, a customer or a payment. A control: the provider's own auditor sees
them all.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from payments.ledger.services import payment_ingest
from payments.models import Customer
from portal.audit import audit_record
from portal.models import ROLES_BY_KIND, OrganisationKind
from portal.permissions import MONEY_AND_IDENTITY_RIGHTS, ROLE_RIGHTS, Right, has_right, rights_of
from support.services.unlocks import unlock_request_create
from tests.factories import UserFactory, make_contract

NATIONAL_ID = "199012345678"


@pytest.fixture
def centre_auditor(service_center):
    return UserFactory(username="sc.auditor", organisation=service_center, role="auditor")


@pytest.fixture
def owners_file(provider_a, technician):
    """A defaulted Dialog contract with a named owner, a payment and the trail they leave."""
    contract = make_contract(provider_a, number="DLG-PRIV-7", first_due_date=provider_a.today() - dt.timedelta(days=60))
    customer = contract.customer
    customer.name = "Kamala Perera"
    customer.set_national_id(NATIONAL_ID)
    customer.save()
    payment_ingest(
        provider=provider_a,
        channel="mobile_money",
        external_id="EZ-PRIV-4242",
        amount=Decimal("4242.42"),
        currency="LKR",
        received_at=timezone.now() - dt.timedelta(hours=2),
        contract_number=contract.number,
        payer_phone=str(customer.phone),
        payer_name="Kamala Perera",
    )
    unlock_request_create(
        device=contract.device, kind="temporary", hours=2, requested_by=technician, reason="Hospital call"
    )
    audit_record(actor=None, action="customer.update", obj=customer, after={"name": customer.name})
    return contract


def secrets_of(contract) -> list[str]:
    customer = Customer.objects.get(pk=contract.customer_id)
    return [
        "Kamala Perera",
        customer.phone.as_e164,
        customer.national_id_masked,
        NATIONAL_ID,
        "4,242.42",
        "4242.42",
        "8,333.33",
        "50,000.00",
        "EZ-PRIV-4242",
    ]


def pages(contract) -> list[str]:
    payment = contract.payments.get()
    return [
        "/",
        reverse("devices:list"),
        reverse("devices:detail", args=[contract.device_id]),
        reverse("devices:dead_letters"),
        reverse("payments:contracts"),
        reverse("payments:contract", args=[contract.pk]),
        reverse("payments:payments"),
        reverse("payments:payment", args=[payment.pk]),
        reverse("locks:paid_still_locked"),
        reverse("dashboard:home"),
        reverse("dashboard:home") + "?provider=dialog",
        reverse("console:search") + "?q=Kamala",
        reverse("console:device", args=[contract.device_id]),
        reverse("support:cases"),
        reverse("support:unlocks"),
        reverse("support:unlock", args=[contract.device.unlock_requests.get().pk]),
        reverse("support:reviews"),
        reverse("portal:audit"),
        reverse("portal:audit_same_browser"),
    ]


def test_no_role_a_service_centre_may_give_holds_a_money_or_identity_right(service_center):
    for role in ROLES_BY_KIND[OrganisationKind.SERVICE_CENTER]:
        user = UserFactory(username=f"sc.{role}", organisation=service_center, role=role)
        assert not rights_of(user) & MONEY_AND_IDENTITY_RIGHTS, role
        assert not has_right(user, Right.VIEW_FINANCE)
    # The very same role in a provider keeps its rights: the organisation decides, not the role name.
    assert Right.VIEW_FINANCE in ROLE_RIGHTS["auditor"]


def test_even_a_provider_role_given_to_a_service_centre_account_by_hand_sees_no_money(service_center):
    wrongly = UserFactory(username="sc.finance", organisation=service_center, role="finance")
    assert not rights_of(wrongly) & MONEY_AND_IDENTITY_RIGHTS


@pytest.mark.parametrize("persona", ["centre_auditor", "technician"])
def test_service_centre_staff_walk_every_page_and_see_no_money_or_identity(persona, owners_file, as_user, request):
    user = request.getfixturevalue(persona)
    client = as_user(user)
    seen = {}
    for url in pages(owners_file):
        response = client.get(url)
        seen[url] = response.status_code
        assert response.status_code in (200, 403, 404), url
        if response.status_code == 200:
            body = response.content.decode()
            leaked = [s for s in secrets_of(owners_file) if s in body]
            assert leaked == [], (url, leaked)
    for url in (
        reverse("payments:contracts"),
        reverse("payments:contract", args=[owners_file.pk]),
        reverse("payments:payments"),
        reverse("console:search") + "?q=Kamala",
        reverse("dashboard:home"),
    ):
        assert seen[url] == 403, url
    # They still do their job: the phone, its lock state and whom to call.
    assert seen[reverse("devices:detail", args=[owners_file.device_id])] == 200
    assert seen[reverse("devices:list")] == 200


def test_the_centre_auditor_reads_its_own_organisations_actions_only(owners_file, centre_auditor, technician, as_user):
    # An event about the money side, even one a technician caused, is never shown to the centre.
    audit_record(actor=technician, action="contract.viewed", obj=owners_file)
    body = as_user(centre_auditor).get(reverse("portal:audit")).content.decode()
    assert "unlock_request.create" in body and "tech" in body  # what its technician did
    assert "login" in body  # its own staff's sign-ins
    assert "customer.update" not in body and "payment.create" not in body and "contract.viewed" not in body
    assert "Kamala Perera" not in body and "DLG-PRIV-7" not in body


def test_the_providers_own_auditor_sees_the_money(owners_file, auditor_a, as_user):
    client = as_user(auditor_a)
    contract_page = client.get(reverse("payments:contract", args=[owners_file.pk])).content.decode()
    assert "Kamala Perera" in contract_page and "4,242.42" in contract_page
    trail = client.get(reverse("portal:audit")).content.decode()
    assert "customer.update" in trail and "Kamala Perera" in trail
