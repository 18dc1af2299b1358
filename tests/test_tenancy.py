"""Each organisation's staff see only what is theirs: 404 across tenants, 403 for a missing right."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.services.registry import device_create
from tests.factories import DeviceFactory, make_contract, make_imei


@pytest.fixture
def world(provider_a, provider_b, agent_a):
    """A locked-out customer at each provider."""
    contract_a = make_contract(provider_a, number="DLG-1")
    contract_b = make_contract(provider_b, number="JAM-1")
    return {"a": contract_a, "b": contract_b}


def test_every_persona_has_a_home_page(as_user, agent_a, finance_a, admin_a, auditor_a, technician, operator, agent_b):
    for user in (agent_a, finance_a, admin_a, auditor_a, technician, operator, agent_b):
        client = as_user(user)
        assert client.get("/").status_code == 200, user.role
        client.logout()


def test_an_agent_reads_own_devices_and_contracts_and_never_another_providers(as_user, agent_a, world):
    client = as_user(agent_a)
    a, b = world["a"], world["b"]
    assert client.get(f"/devices/{a.device_id}/").status_code == 200
    page = client.get(f"/contracts/{a.pk}/")
    assert page.status_code == 200
    assert a.customer.name.encode() in page.content
    assert client.get(f"/devices/{b.device_id}/").status_code == 404
    assert client.get(f"/contracts/{b.pk}/").status_code == 404
    listing = client.get("/devices/").content
    assert a.device.imei.encode() in listing and b.device.imei.encode() not in listing
    contracts = client.get("/contracts/").content
    assert b"DLG-1" in contracts and b"JAM-1" not in contracts


def test_a_technician_sees_lock_state_and_whom_to_call_but_no_finances(as_user, technician, world, provider_a):
    import datetime as dt

    from payments.locks.services import lock_sweep

    lock_sweep(now=dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC))  # DLG-1 is past grace: locked
    client = as_user(technician)
    a, b = world["a"], world["b"]
    page = client.get(f"/devices/{a.device_id}/")
    assert page.status_code == 200
    body = page.content.decode()
    assert a.device.imei in body
    assert provider_a.hotline_numbers[0] in body.replace(" ", "")
    assert a.customer.name not in body and "LKR" not in body and "DLG-1" not in body
    assert "Locked" in body and "days overdue" not in body and "15 Jan 2026" not in body  # no payment history
    assert client.get(f"/contracts/{a.pk}/").status_code == 403  # in scope, right missing
    assert client.get("/contracts/").status_code == 403
    assert client.get(f"/devices/{b.device_id}/").status_code == 404  # provider B is not served


def test_an_outsider_finds_nothing(as_user, outsider, world):
    client = as_user(outsider)
    assert client.get(f"/devices/{world['a'].device_id}/").status_code == 404
    # The search box keeps what was typed; the result must not list the device.
    body = client.get(f"/devices/?q={world['a'].device.imei}").content.decode()
    assert f"/devices/{world['a'].device_id}/" not in body and "No device with IMEI" in body


def test_the_platform_operator_sees_devices_everywhere_but_not_owners_finances(as_user, operator, world):
    client = as_user(operator)
    assert client.get(f"/devices/{world['b'].device_id}/").status_code == 200
    assert client.get(f"/contracts/{world['b'].pk}/").status_code == 403
    assert client.get("/organisations/").status_code == 200


def test_an_auditor_reads_only_its_own_providers_trail(as_user, auditor_a, agent_a, agent_b, provider_a, provider_b):
    imei_a, imei_b = make_imei(), make_imei()
    device_create(provider=provider_a, actor=agent_a, imei=imei_a)
    device_create(provider=provider_b, actor=agent_b, imei=imei_b)
    body = as_user(auditor_a).get("/audit/").content
    assert imei_a.encode() in body or b"agent.a" in body
    assert b"agent.b" not in body


def test_an_agent_cannot_open_settings_or_the_audit_trail(as_user, agent_a):
    client = as_user(agent_a)
    assert client.get("/settings/").status_code == 403
    assert client.get("/audit/").status_code == 403
    assert client.get("/organisations/").status_code == 403


def test_the_django_admin_is_for_the_platform_operator_only(as_user, agent_a):
    response = as_user(agent_a).get("/admin/")
    assert response.status_code == 302  # not staff: sent to sign in


def _queries(client, url):
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_lists_cost_the_same_number_of_queries_for_3_or_30_rows(as_user, agent_a, provider_a):
    client = as_user(agent_a)
    for _ in range(3):
        make_contract(provider_a)
    few = (_queries(client, "/devices/"), _queries(client, "/contracts/"))
    for _ in range(27):
        make_contract(provider_a)
    DeviceFactory.create_batch(5, provider=provider_a)
    many = (_queries(client, "/devices/"), _queries(client, "/contracts/"))
    assert few == many
