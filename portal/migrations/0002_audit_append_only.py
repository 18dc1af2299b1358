"""Create the audit chain head, and on PostgreSQL refuse UPDATE and DELETE on audit events."""

from django.db import migrations

GENESIS = "0" * 64

TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION finlock_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER portal_auditevent_append_only
    BEFORE UPDATE OR DELETE ON portal_auditevent
    FOR EACH ROW EXECUTE FUNCTION finlock_audit_append_only();
"""

DROP_SQL = """
DROP TRIGGER IF EXISTS portal_auditevent_append_only ON portal_auditevent;
DROP FUNCTION IF EXISTS finlock_audit_append_only();
"""


def create_head(apps, schema_editor):
    apps.get_model("portal", "AuditChainHead").objects.get_or_create(pk=1, defaults={"last_hash": GENESIS})


def add_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TRIGGER_SQL, params=None)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [("portal", "0001_initial")]

    operations = [
        migrations.RunPython(create_head, migrations.RunPython.noop),
        migrations.RunPython(add_trigger, drop_trigger),
    ]
