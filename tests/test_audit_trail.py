"""An auditor must be able to trust the trail: every change and sign-in is there, and tampering is found."""

import threading

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from devices.services import device_create, device_update
from portal.models import AuditEvent
from portal.services import audit_record, audit_verify_chain
from tests.factories import make_imei


def _tamper(sql: str, params) -> None:
    """Edit the table behind the application's back, as an attacker with DB access would."""
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":  # a superuser can switch triggers off for its session
            cur.execute("SET session_replication_role = replica")
        cur.execute(sql, params)
        if connection.vendor == "postgresql":
            cur.execute("SET session_replication_role = DEFAULT")


def test_device_create_and_change_are_recorded_with_before_and_after(agent_a, provider_a):
    device = device_create(provider=provider_a, actor=agent_a, imei=make_imei(), maker="Xiaomi")
    device_update(device=device, actor=agent_a, model="Redmi 13C")
    created, changed = AuditEvent.objects.filter(object_id=str(device.pk)).order_by("id")
    assert created.action == "device.create"
    assert created.actor == agent_a and created.organisation == provider_a
    assert created.after["imei"] == device.imei
    assert changed.action == "device.update"
    assert changed.before["model"] == "" and changed.after["model"] == "Redmi 13C"


def test_sign_in_and_failed_sign_in_are_recorded(client, agent_a):
    client.post("/login/", {"username": "agent.a", "password": "wrong-password-here"})
    client.post("/login/", {"username": "agent.a", "password": "correct-horse-battery"})
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert "login.failed" in actions
    assert "login" in actions
    failed = AuditEvent.objects.get(action="login.failed")
    assert failed.organisation_id == agent_a.organisation_id
    assert failed.ip_address == "127.0.0.1"


def test_the_chain_verifies_and_names_an_altered_event(agent_a, provider_a):
    for _ in range(5):
        device_create(provider=provider_a, actor=agent_a, imei=make_imei())
    call_command("audit_verify")
    victim = AuditEvent.objects.order_by("id")[2]
    _tamper("UPDATE portal_auditevent SET actor_label = %s WHERE id = %s", ["someone-else", victim.id])
    report = audit_verify_chain()
    assert report.first_broken_id == victim.id
    assert "altered" in report.reason
    with pytest.raises(CommandError, match=f"#{victim.id}"):
        call_command("audit_verify")


def test_a_removed_event_is_found(agent_a, provider_a):
    for _ in range(4):
        device_create(provider=provider_a, actor=agent_a, imei=make_imei())
    ids = list(AuditEvent.objects.order_by("id").values_list("id", flat=True))
    _tamper("DELETE FROM portal_auditevent WHERE id = %s", [ids[1]])
    assert audit_verify_chain().first_broken_id == ids[2]


def test_removing_the_newest_events_is_found(agent_a, provider_a):
    for _ in range(3):
        device_create(provider=provider_a, actor=agent_a, imei=make_imei())
    newest = AuditEvent.objects.order_by("-id").first()
    _tamper("DELETE FROM portal_auditevent WHERE id = %s", [newest.id])
    report = audit_verify_chain()
    assert not report.ok and "newest" in report.reason


def test_the_application_refuses_to_edit_or_delete_events(agent_a):
    event = audit_record(actor=agent_a, action="test")
    event.action = "changed"
    with pytest.raises(ValidationError):
        event.save()
    with pytest.raises(ValidationError):
        event.delete()


@pytest.mark.postgres
def test_postgres_refuses_updates_to_the_trail(agent_a):
    event = audit_record(actor=agent_a, action="test")
    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="changed")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_unbroken_chain(provider_a):
    errors = []

    def writer(n):
        try:
            for i in range(15):
                with transaction.atomic():
                    audit_record(actor=None, action=f"writer{n}.{i}")
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    report = audit_verify_chain()
    assert report.ok, report
    assert report.checked == AuditEvent.objects.count() >= 60
