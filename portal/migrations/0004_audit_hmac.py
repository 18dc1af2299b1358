"""Keyed audit hashes: a key id per event, a signed chain head with the boundary of unkeyed
events, and on PostgreSQL triggers that refuse TRUNCATE of the trail and of the head, and
DELETE of the head row.

Events written before this migration keep their plain SHA-256 and verify as they are; the
head records the last of them (``legacy_until``) and is signed with the audit key, so no
event after it can pass for an unkeyed one. Run ``audit_verify`` before migrating: the
head is signed as it stands.
"""

from django.db import migrations, models
from django.db.models import Max

GENESIS = "0" * 64

TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION finlock_audit_protect() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only (% on % refused)', TG_OP, TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER portal_auditevent_no_truncate
    BEFORE TRUNCATE ON portal_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION finlock_audit_protect();
CREATE TRIGGER portal_auditchainhead_no_truncate
    BEFORE TRUNCATE ON portal_auditchainhead
    FOR EACH STATEMENT EXECUTE FUNCTION finlock_audit_protect();
CREATE TRIGGER portal_auditchainhead_no_delete
    BEFORE DELETE ON portal_auditchainhead
    FOR EACH ROW EXECUTE FUNCTION finlock_audit_protect();
"""

DROP_SQL = """
DROP TRIGGER IF EXISTS portal_auditchainhead_no_delete ON portal_auditchainhead;
DROP TRIGGER IF EXISTS portal_auditchainhead_no_truncate ON portal_auditchainhead;
DROP TRIGGER IF EXISTS portal_auditevent_no_truncate ON portal_auditevent;
DROP FUNCTION IF EXISTS finlock_audit_protect();
"""


def seal_head(apps, schema_editor):
    # The key lives in the environment of the process running the migration, never in the database.
    from portal import audit_keys  # noqa: PLC0415 - app code only when the migration runs, not when it is loaded

    head, _created = apps.get_model("portal", "AuditChainHead").objects.get_or_create(
        pk=1, defaults={"last_hash": GENESIS}
    )
    head.legacy_until = apps.get_model("portal", "AuditEvent").objects.aggregate(last=Max("id"))["last"] or 0
    head.key_id = audit_keys.signing_key()[0]
    message = audit_keys.head_message(
        last_event_id=head.last_event_id,
        last_hash=head.last_hash,
        legacy_until=head.legacy_until,
        unverified_since=head.unverified_since,
        key_id=head.key_id,
    )
    head.mac = audit_keys.mac(head.key_id, message)
    head.save()


def add_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TRIGGER_SQL, params=None)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [("portal", "0003_provider_webhooks")]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="key_id",
            field=models.CharField(
                blank=True,
                default="",
                help_text="The audit key the hash is keyed with; empty for events hashed before keyed hashing (SHA-256).",
                max_length=40,
            ),
        ),
        migrations.AddField(
            model_name="auditchainhead",
            name="legacy_until",
            field=models.BigIntegerField(
                default=0,
                help_text="Events up to this id were hashed before keyed hashing; every later one is keyed.",
            ),
        ),
        migrations.AddField(
            model_name="auditchainhead",
            name="unverified_since",
            field=models.BigIntegerField(
                blank=True,
                null=True,
                help_text="Set when an append found this row's signature invalid (the row was altered in the database): the id of the first event written on top of it. Never cleared.",
            ),
        ),
        migrations.AddField(
            model_name="auditchainhead",
            name="key_id",
            field=models.CharField(blank=True, default="", max_length=40),
        ),
        migrations.AddField(
            model_name="auditchainhead",
            name="mac",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.RunPython(seal_head, migrations.RunPython.noop),
        migrations.RunPython(add_triggers, drop_triggers),
    ]
