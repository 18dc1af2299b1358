"""A trigram index for the agent console's name search (PostgreSQL only).

The console finds a customer by any part of the name (``name__icontains``, which Django
writes as ``UPPER(name::text) LIKE UPPER('%…%')``). No B-tree serves a "contains", so
without this index the search reads every customer: about 0.4 s at 1,000,000 devices.
pg_trgm's GIN index on the same expression serves it. SQLite (development) has no such
index and needs none at demo size, so the operation does nothing there.
"""

from django.db import migrations

CREATE = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS customer_name_trgm ON payments_customer USING gin ((UPPER(name::text)) gin_trgm_ops)",
]
DROP = ["DROP INDEX IF EXISTS customer_name_trgm"]


def _run(statements):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for statement in statements:
            schema_editor.execute(statement)

    return apply


class Migration(migrations.Migration):
    dependencies = [("payments", "0008_channel_short_code_and_hashed_msisdn")]

    operations = [migrations.RunPython(_run(CREATE), _run(DROP), elidable=False)]
