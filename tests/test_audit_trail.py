"""An auditor must be able to trust the trail: every change and sign-in is there, and tampering is found."""

import base64
import hashlib
import io
import json
import logging
import os
import threading

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.services.registry import device_create, device_update
from portal import audit_keys
from portal.audit import (
    AuditEntry,
    audit_record,
    audit_record_many,
    event_canonical,
    event_hash,
)
from portal.audit_checkpoints import audit_checkpoints_read
from portal.audit_verify import audit_verify_chain
from portal.models import AuditChainHead, AuditEvent
from tests.factories import make_imei


def _tamper(sql: str, params) -> None:
    """Edit the table behind the application's back, as an attacker with DB access would."""
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":  # a superuser can switch triggers off for its session
            # The test's transaction holds deferred foreign-key checks, which TRUNCATE refuses to
            # skip; an attacker's own session has none.
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
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


# --- tamper evidence against whoever can write the database (issue 9, finding 7) ---------------


def _plain_sha256(event) -> str:
    """The trail's unkeyed hash as anyone reading the source can compute it (what an attacker recomputes):
    plain SHA-256 over the very bytes the keyed hash covers."""
    return hashlib.sha256(event_canonical(event)).hexdigest()


def _rewrite_from(victim_id: int, *, label: str, hasher, unkeyed: bool = False) -> str:
    """As a database user with the triggers off: change one event, recompute every later link and hash
    with ``hasher`` and move the head's hash along. Returns the new last hash."""
    prev = None
    for event in AuditEvent.objects.filter(id__gte=victim_id).order_by("id"):
        if event.id == victim_id:
            event.actor_label = label
        if prev is not None:
            event.prev_hash = prev
        if unkeyed:
            event.key_id = ""
            _tamper("UPDATE portal_auditevent SET key_id = '' WHERE id = %s", [event.id])
        event.hash = hasher(event)
        _tamper(
            "UPDATE portal_auditevent SET actor_label = %s, prev_hash = %s, hash = %s WHERE id = %s",
            [event.actor_label, event.prev_hash, event.hash, event.id],
        )
        prev = event.hash
    _tamper("UPDATE portal_auditchainhead SET last_hash = %s WHERE id = 1", [prev])
    return prev


def _head_signed_by_key_holder() -> None:
    """What only a holder of the audit key can do: sign the head as it now stands."""
    head = AuditChainHead.objects.get(pk=1)
    key_id = audit_keys.signing_key()[0]
    fields = {
        "last_event_id": head.last_event_id,
        "last_hash": head.last_hash,
        "legacy_until": head.legacy_until,
        "unverified_since": head.unverified_since,
        "key_id": key_id,
    }
    mac = audit_keys.mac(key_id, audit_keys.head_message(**fields))
    _tamper("UPDATE portal_auditchainhead SET key_id = %s, mac = %s WHERE id = 1", [key_id, mac])


@pytest.fixture
def celery_eager():
    """Run queued tasks in-process even when the run has a broker but no worker."""
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.fixture
def known_audit_key(settings):
    """A known audit key in force; the one that signed the head so far stays as a retired key."""
    old_id, old = audit_keys.signing_key()
    key = os.urandom(32)
    settings.AUDIT_HMAC_RETIRED_KEYS = {old_id: old}
    settings.AUDIT_HMAC_KEY = ("audit-test", key)
    return key


def _events(n: int, *, actor=None) -> list[AuditEvent]:
    return [audit_record(actor=actor, action=f"test.{i}") for i in range(n)]


@pytest.mark.postgres
def test_postgres_refuses_to_truncate_the_trail_or_delete_its_head(agent_a):
    _events(3, actor=agent_a)
    for statement in (
        "TRUNCATE portal_auditevent",
        "TRUNCATE portal_auditchainhead",
        "DELETE FROM portal_auditchainhead",
        # A careless cascade from the users or tenants would empty the trail with them.
        "TRUNCATE portal_user CASCADE",
    ):
        with pytest.raises(Exception, match="append-only"), transaction.atomic(), connection.cursor() as cur:
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")  # see _tamper
            cur.execute(statement)
    assert AuditEvent.objects.count() == 3
    assert AuditChainHead.objects.filter(pk=1).exists()
    assert audit_verify_chain().ok


def test_an_emptied_trail_whose_head_still_holds_a_hash_is_broken(agent_a):
    events = _events(3, actor=agent_a)
    # TRUNCATE with the triggers off (PostgreSQL) or a plain DELETE (SQLite): every row gone at once.
    _tamper("TRUNCATE portal_auditevent" if connection.vendor == "postgresql" else "DELETE FROM portal_auditevent", [])
    report = audit_verify_chain()
    assert not report.ok and report.checked == 0
    assert report.first_broken_id == events[-1].id
    assert "every event was removed" in report.reason
    with pytest.raises(CommandError, match="every event was removed"):
        call_command("audit_verify")


def test_a_deleted_head_row_is_reported_and_not_quietly_recreated(agent_a):
    events = _events(2, actor=agent_a)
    _tamper("DELETE FROM portal_auditchainhead", [])
    report = audit_verify_chain()
    assert not report.ok and "chain head row is missing" in report.reason
    # The next append starts a new head, but one that says what it found.
    after = audit_record(actor=agent_a, action="login")
    assert AuditChainHead.objects.get(pk=1).unverified_since == after.id
    report = audit_verify_chain()
    assert report.first_broken_id == after.id and events[-1].hash != after.prev_hash


def test_an_event_edited_behind_the_triggers_and_rehashed_with_plain_sha256_is_found(agent_a):
    events = _events(6, actor=agent_a)
    victim = events[2]
    _rewrite_from(victim.id, label="someone-else", hasher=_plain_sha256)
    report = audit_verify_chain()
    assert report.first_broken_id == victim.id
    assert "altered" in report.reason
    with pytest.raises(CommandError, match=f"#{victim.id}"):
        call_command("audit_verify")


def test_rewritten_events_cannot_pass_for_events_from_before_keyed_hashing(agent_a):
    events = _events(5, actor=agent_a)
    victim = events[1]
    # The attacker marks the rewritten events as unkeyed, as events written before the upgrade are.
    last_hash = _rewrite_from(victim.id, label="someone-else", hasher=_plain_sha256, unkeyed=True)
    report = audit_verify_chain()
    assert report.first_broken_id == victim.id
    assert "not keyed" in report.reason
    # ... and raises the boundary of unkeyed events on the head: its signature no longer verifies.
    _tamper("UPDATE portal_auditchainhead SET legacy_until = %s WHERE id = 1", [events[-1].id])
    assert AuditChainHead.objects.get(pk=1).last_hash == last_hash
    report = audit_verify_chain()
    assert not report.ok and "chain head row does not match its signature" in report.reason


def test_an_altered_head_is_not_laundered_by_the_next_append(agent_a, caplog):
    events = _events(4, actor=agent_a)
    _rewrite_from(events[1].id, label="someone-else", hasher=_plain_sha256, unkeyed=True)
    _tamper("UPDATE portal_auditchainhead SET legacy_until = %s WHERE id = 1", [events[-1].id])
    # The application keeps recording (refusing would stop sign-ins and payments) ...
    after = audit_record(actor=agent_a, action="login")
    head = AuditChainHead.objects.get(pk=1)
    assert head.last_event_id == after.id and head.unverified_since == after.id
    assert "chain head row does not match its signature" in caplog.text
    # ... but the head it signs again says for good that it found the row altered.
    later = audit_record(actor=agent_a, action="logout")
    assert AuditChainHead.objects.get(pk=1).unverified_since == after.id
    report = audit_verify_chain()
    assert not report.ok
    assert report.first_broken_id in {events[1].id, after.id}
    assert later.key_id and later.hash != _plain_sha256(later)


def test_an_event_slipped_in_after_the_head_is_found(agent_a):
    events = _events(2, actor=agent_a)
    forged = AuditEvent(
        created_at=events[-1].created_at,
        actor_label="nobody",
        action="test.forged",
        prev_hash=events[-1].hash,
        key_id="",
    )
    forged.hash = _plain_sha256(forged)
    forged.save()
    report = audit_verify_chain()
    assert report.first_broken_id == forged.id and not report.ok


@pytest.mark.django_db(transaction=True)
def test_an_existing_unkeyed_trail_still_verifies_after_the_upgrade_and_new_events_are_keyed():
    executor = MigrationExecutor(connection)
    executor.migrate([("portal", "0003_provider_webhooks")])
    old = executor.loader.project_state([("portal", "0003_provider_webhooks")]).apps
    OldEvent, OldHead = old.get_model("portal", "AuditEvent"), old.get_model("portal", "AuditChainHead")
    head, _ = OldHead.objects.get_or_create(pk=1, defaults={"last_hash": "0" * 64})
    prev = head.last_hash
    for i in range(3):
        event = OldEvent(created_at=timezone.now(), actor_label="system", action=f"old.{i}", prev_hash=prev)
        event.hash = _plain_sha256(event)
        event.save()
        prev = event.hash
    OldHead.objects.filter(pk=1).update(last_hash=prev, last_event_id=event.id)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    head = AuditChainHead.objects.get(pk=1)
    assert head.legacy_until == event.id and head.mac
    report = audit_verify_chain()
    assert report.ok, report
    assert report.checked == 3 and report.unkeyed == 3

    new = audit_record(actor=None, action="new")
    assert new.key_id == audit_keys.signing_key()[0] and new.hash != _plain_sha256(new)
    report = audit_verify_chain()
    assert report.ok and report.checked == 4 and report.unkeyed == 3
    assert report.key_ids == (new.key_id,)


def test_rotating_the_audit_key_keeps_older_events_verifiable(db, settings):
    before = audit_record(actor=None, action="before.rotation")
    old_id, old = audit_keys.signing_key()
    settings.AUDIT_HMAC_RETIRED_KEYS = {old_id: old}
    settings.AUDIT_HMAC_KEY = ("audit2027", os.urandom(32))
    after = audit_record(actor=None, action="after.rotation")
    assert (before.key_id, after.key_id) == (old_id, "audit2027")
    report = audit_verify_chain()
    assert report.ok and report.key_ids == tuple(sorted({old_id, "audit2027"}))
    # Dropping the retired key too early leaves its events unverifiable, and says so.
    settings.AUDIT_HMAC_RETIRED_KEYS = {}
    report = audit_verify_chain()
    assert report.first_broken_id == before.id
    assert f"audit key {old_id!r}, which is not configured" in report.reason


def test_a_checkpoint_catches_a_prefix_rewritten_by_a_holder_of_the_key(agent_a, settings):
    events = _events(6, actor=agent_a)
    call_command("audit_checkpoint", stdout=io.StringIO())
    path = str(settings.AUDIT_CHECKPOINT_FILE)
    call_command("audit_verify", "--checkpoint", path, stdout=io.StringIO())
    # Whoever holds the key can rewrite and rehash everything, head included ...
    _rewrite_from(events[2].id, label="someone-else", hasher=event_hash)
    _head_signed_by_key_holder()
    assert audit_verify_chain().ok  # ... which the trail alone cannot show (the README says so),
    report = audit_verify_chain(checkpoints=audit_checkpoints_read(path))  # but a checkpoint kept outside can:
    assert not report.ok
    assert report.first_broken_id == events[0].id
    assert f"events #{events[0].id}-#{events[-1].id} were rewritten" in report.reason
    with pytest.raises(CommandError, match="were rewritten"):
        call_command("audit_verify", "--checkpoint", path)


def test_a_later_checkpoint_narrows_the_rewritten_range(agent_a, settings):
    first = _events(3, actor=agent_a)
    call_command("audit_checkpoint", stdout=io.StringIO())
    second = _events(3, actor=agent_a)
    call_command("audit_checkpoint", stdout=io.StringIO())
    _rewrite_from(second[1].id, label="someone-else", hasher=event_hash)
    _head_signed_by_key_holder()
    report = audit_verify_chain(checkpoints=audit_checkpoints_read(settings.AUDIT_CHECKPOINT_FILE))
    assert report.checkpoints_matched == 1 and report.newest_checkpoint.event_id == first[-1].id
    assert report.first_broken_id == second[0].id
    assert f"events #{second[0].id}-#{second[-1].id} were rewritten" in report.reason


def test_a_checkpoint_catches_a_trail_cut_back_to_an_older_head(agent_a, settings):
    kept = _events(5, actor=agent_a)
    old_head = AuditChainHead.objects.values("last_hash", "last_event_id", "key_id", "mac").get(pk=1)
    removed = _events(3, actor=agent_a)
    call_command("audit_checkpoint", stdout=io.StringIO())
    # Delete the newest events and put back a head row saved earlier (validly signed then).
    _tamper("DELETE FROM portal_auditevent WHERE id > %s", [kept[-1].id])
    _tamper(
        "UPDATE portal_auditchainhead SET last_hash = %s, last_event_id = %s, key_id = %s, mac = %s WHERE id = 1",
        [old_head["last_hash"], old_head["last_event_id"], old_head["key_id"], old_head["mac"]],
    )
    assert audit_verify_chain().ok  # the trail alone cannot tell (the README says so)
    path = str(settings.AUDIT_CHECKPOINT_FILE)
    with pytest.raises(CommandError, match=rf"events #{kept[-1].id + 1}-#{removed[-1].id} are missing"):
        call_command("audit_verify", "--checkpoint", path)
    # An emptied trail with a genesis head put back is shorter than the checkpoint too.
    _tamper("DELETE FROM portal_auditevent", [])
    genesis = AuditChainHead.objects.get(pk=1)
    genesis.last_hash, genesis.last_event_id = "0" * 64, None
    genesis.save()
    _head_signed_by_key_holder()
    assert audit_verify_chain().ok
    with pytest.raises(CommandError, match=rf"ends at #0 .* events #1-#{removed[-1].id} are missing"):
        call_command("audit_verify", "--checkpoint", path)


def test_a_forged_or_malformed_checkpoint_is_refused(agent_a, settings, tmp_path):
    events = _events(2, actor=agent_a)
    call_command("audit_checkpoint", stdout=io.StringIO())
    line = json.loads(settings.AUDIT_CHECKPOINT_FILE.read_text().splitlines()[-1])
    assert line["event_id"] == events[-1].id and line["hash"] == events[-1].hash
    forged = tmp_path / "forged.jsonl"
    forged.write_text(json.dumps(line | {"hash": "f" * 64}) + "\n")
    with pytest.raises(CommandError, match="forged.jsonl:1 .* does not match its signature"):
        call_command("audit_verify", "--checkpoint", str(forged))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(line) + "\n" + '{"v": 1, "event_id": "seven"}\n')
    with pytest.raises(CommandError, match="broken.jsonl:2: event_id must be a positive integer"):
        call_command("audit_verify", "--checkpoint", str(broken))
    with pytest.raises(CommandError, match="holds no audit checkpoint"):
        empty = tmp_path / "empty.log"
        empty.write_text("nothing here\n")
        call_command("audit_verify", "--checkpoint", str(empty))


def test_checkpoints_come_every_n_events_and_from_the_periodic_job_and_verify_from_the_log(
    agent_a, settings, tmp_path, caplog, celery_eager, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.INFO)
    settings.AUDIT_CHECKPOINT_EVENTS = 3
    path = settings.AUDIT_CHECKPOINT_FILE
    with django_capture_on_commit_callbacks(execute=True):
        events = _events(7, actor=agent_a)
    lines = path.read_text().splitlines()
    assert lines and json.loads(lines[-1])["event_id"] == events[-1].id

    job = settings.CELERY_BEAT_SCHEDULE["portal.audit-checkpoint"]
    assert job["schedule"] == settings.AUDIT_CHECKPOINT_MINUTES * 60
    from config.celery import app

    task = app.tasks[job["task"]]
    assert task.apply().get() is None  # nothing new since the last checkpoint: nothing written
    assert len(path.read_text().splitlines()) == len(lines)
    more = _events(2, actor=agent_a)
    assert task.apply().get() == more[-1].id
    assert len(path.read_text().splitlines()) == len(lines) + 1

    # The log carries the same lines: a log shipped off the host verifies the trail too.
    log_file = tmp_path / "finlock.log"
    log_file.write_text("2026-01-01 INFO django unrelated line\n" + caplog.text)
    out = io.StringIO()
    call_command("audit_verify", "--checkpoint", str(log_file), stdout=out)
    assert f"covers events up to #{more[-1].id}" in out.getvalue()


def test_the_audit_key_never_appears_in_the_trail_the_checkpoints_or_the_logs(
    agent_a, known_audit_key, settings, caplog, client
):
    caplog.set_level(logging.DEBUG)
    client.post("/login/", {"username": "agent.a", "password": "correct-horse-battery"})
    events = _events(3, actor=agent_a)
    assert {e.key_id for e in events} == {"audit-test"}
    output = io.StringIO()
    call_command("audit_checkpoint", stdout=output)
    call_command("audit_verify", "--checkpoint", str(settings.AUDIT_CHECKPOINT_FILE), stdout=output)
    call_command("audit_hmac_key", stdout=output)
    # The path that logs loudest: an altered head found while appending.
    _tamper("UPDATE portal_auditchainhead SET legacy_until = 999999 WHERE id = 1", [])
    audit_record(actor=agent_a, action="after.tamper")
    with pytest.raises(CommandError) as broken:
        call_command("audit_verify", "--checkpoint", str(settings.AUDIT_CHECKPOINT_FILE))

    trail = json.dumps(list(AuditEvent.objects.values()), default=str)
    head = json.dumps(list(AuditChainHead.objects.values()), default=str)
    places = [
        trail,
        head,
        settings.AUDIT_CHECKPOINT_FILE.read_text(),
        caplog.text,
        output.getvalue(),
        str(broken.value),
    ]
    forms = [base64.b64encode(known_audit_key).decode(), known_audit_key.hex(), repr(known_audit_key)]
    for place in places:
        for form in forms:
            assert form not in place
    assert "audit-test" in output.getvalue()


def test_keyed_recording_costs_no_extra_query(agent_a):
    def statements(record) -> list[str]:
        with CaptureQueriesContext(connection) as context:
            record()
        return [q["sql"].split()[0] for q in context.captured_queries if "SAVEPOINT" not in q["sql"]]

    audit_record(actor=agent_a, action="warm")
    # Lock the head, insert, find the last id, move the head: the same four as unkeyed.
    assert statements(lambda: audit_record(actor=agent_a, action="one")) == ["SELECT", "INSERT", "SELECT", "UPDATE"]
    # A batch of 5,000 events: bulk inserts (as many as the database's batch size needs) and
    # still one head lock, one last-id lookup and one head update, nothing per event.
    entries = [AuditEntry(action="statement.credit", after={"line": i}) for i in range(5000)]
    batch = statements(lambda: audit_record_many(actor=None, entries=entries))
    assert [verb for verb in batch if verb != "INSERT"] == ["SELECT", "SELECT", "UPDATE"]
    assert audit_verify_chain().ok
