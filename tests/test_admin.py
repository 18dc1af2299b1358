"""The platform operator uses the Django admin: searchable by IMEI, phone and contract number, and audited."""

import pytest

from portal.models import AuditEvent
from tests.factories import make_contract


@pytest.fixture
def operator_client(as_user, operator):
    operator.is_superuser = True
    operator.save()
    return as_user(operator)


def test_admin_finds_a_contract_by_number_imei_and_phone(operator_client, provider_a):
    contract = make_contract(provider_a, number="DLG-2026-000042")
    other = make_contract(provider_a, number="DLG-2026-000043")
    for query in ("DLG-2026-000042", contract.device.imei, contract.customer.phone.as_e164):
        body = operator_client.get("/admin/payments/contract/", {"q": query}).content.decode()
        assert "DLG-2026-000042" in body, query
        assert other.number not in body, query
    body = operator_client.get("/admin/devices/device/", {"q": contract.device.imei}).content.decode()
    assert contract.device.imei in body and other.device.imei not in body


def test_a_change_in_the_admin_is_audited_with_before_and_after(operator_client, provider_a):
    data = {
        "kind": "provider",
        "name": "Dialog Finance PLC",
        "slug": "dialog",
        "country": "LK",
        "currency": "LKR",
        "time_zone": "Asia/Colombo",
        "languages": '["si", "ta", "en"]',
        "hotline_numbers": '["+94777575727"]',
        "support_email": "help@example.com",
        "website": "https://example.com",
    }
    response = operator_client.post(f"/admin/portal/organisation/{provider_a.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    event = AuditEvent.objects.get(action="organisation.update")
    assert event.before["name"] == "Dialog Finance" and event.after["name"] == "Dialog Finance PLC"


def test_audit_events_cannot_be_edited_in_the_admin(operator_client, agent_a):
    from portal.audit import audit_record

    event = audit_record(actor=agent_a, action="test")
    assert operator_client.post(f"/admin/portal/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_every_model_has_an_admin_page_that_opens_and_records_written_by_services_are_read_only(
    operator_client, provider_a
):
    from django.apps import apps
    from django.contrib import admin

    from payments.locks.services import lock_sweep

    make_contract(provider_a, number="DLG-9")
    lock_sweep()  # commands, attempts: rows in every list
    missing = []
    for app in ("portal", "devices", "payments", "support"):
        for model in apps.get_app_config(app).get_models():
            if model._meta.model_name == "auditchainhead":
                continue  # one internal row: the head of the audit chain
            if model not in admin.site._registry:
                missing.append(model.__name__)
                continue
            url = f"/admin/{app}/{model._meta.model_name}/"
            assert operator_client.get(url).status_code == 200, url
    assert missing == []
    assert operator_client.get("/admin/payments/payment/add/").status_code == 403
    assert operator_client.get("/admin/devices/devicecommand/add/").status_code == 403


def test_the_admin_cannot_change_a_lock_behind_the_lock_api(operator_client, provider_a, operator):
    """A lock changes only through payments.locks.services (decided, signed, audited): the admin shows it, no more."""
    from payments.locks.services import contract_dispute_hold
    from payments.models import LockOverride

    contract = make_contract(provider_a, number="DLG-77")
    page = operator_client.get(f"/admin/payments/contract/{contract.pk}/change/").content.decode()
    assert 'name="lock_state"' not in page and 'name="status"' not in page and 'name="number"' not in page
    hold = contract_dispute_hold(contract=contract, actor=operator, reason="Customer disputes the schedule")
    assert operator_client.get(f"/admin/payments/lockoverride/{hold.pk}/delete/").status_code == 403
    operator_client.post(f"/admin/payments/lockoverride/{hold.pk}/delete/", {"post": "yes"})
    assert LockOverride.objects.filter(pk=hold.pk).exists()
    assert AuditEvent.objects.filter(action="lock_override.create", object_id=str(hold.pk)).exists()
