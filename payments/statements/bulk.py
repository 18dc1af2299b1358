"""Writing many rows at once, at the speed a statement import needs (``payments.statements.reconcile``).

PostgreSQL gets COPY, sequence-reserved ids and an UPDATE joined to ``unnest`` of arrays;
development databases (SQLite) get Django's ``bulk_create`` and ``bulk_update``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection, models
from django.db.models import JSONField, Max
from psycopg.types.json import Jsonb


def bulk_set_columns(model: type[models.Model], objects: Sequence[models.Model], columns: dict[str, str]) -> None:
    """Write ``columns`` (name: PostgreSQL type) of many rows from their objects in one UPDATE per 5,000.

    ``bulk_update`` builds a CASE per row and column, which costs more than the whole
    crediting; on PostgreSQL this joins an ``unnest`` of arrays instead. The callers hold
    the rows' locks, so the values computed from them are current.
    """
    if not objects:
        return
    if connection.vendor != "postgresql":
        model._default_manager.bulk_update(objects, [name.removesuffix("_id") for name in columns], batch_size=1000)
        return
    table = model._meta.db_table
    names = list(columns)
    assignments = ", ".join(f"{name} = v.{name}" for name in names)
    arrays = ", ".join(["%s::bigint[]", *(f"%s::{kind}[]" for kind in columns.values())])
    # Names come from the model and the caller's literals; every value goes as a parameter.
    sql = f"UPDATE {table} AS t SET {assignments} FROM unnest({arrays}) AS v(id, {', '.join(names)}) WHERE t.id = v.id"  # noqa: S608
    with connection.cursor() as cursor:
        for start in range(0, len(objects), 5000):
            chunk = objects[start : start + 5000]
            cursor.execute(sql, [[o.pk for o in chunk], *([getattr(o, n) for o in chunk] for n in names)])


def reserve_ids(model: type[models.Model], count: int) -> list[int]:
    """``count`` new ids of ``model``'s table, taken before the rows are written (rows point at each other).

    On PostgreSQL from the table's sequence, one ``nextval`` each, so concurrent writers
    never collide; on development databases the next ids after the highest (SQLite lets
    one transaction write at a time).
    """
    if not count:
        return []
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                [model._meta.db_table, count],
            )
            return [row[0] for row in cursor.fetchall()]
    top = model._default_manager.aggregate(top=Max("pk"))["top"] or 0
    return list(range(top + 1, top + 1 + count))


def copy_rows(model: type[models.Model], rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (column attname: value, ``id`` included): COPY on PostgreSQL, ``bulk_create`` elsewhere.

    ``bulk_create`` spends most of a statement import building model instances and
    compiling INSERTs; COPY takes the values as they are. Columns a row leaves out get
    the field's default. Constraint violations surface as Django's ``IntegrityError``.
    """
    if not rows:
        return
    fields = model._meta.concrete_fields
    defaults = {f.attname: f.get_default() for f in fields if f.attname not in rows[0]}
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create([model(**defaults, **row) for row in rows], batch_size=2000)
        return

    names = [f.attname for f in fields]
    wrap = {f.attname for f in fields if isinstance(f, JSONField)}
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    with (
        connection.cursor() as cursor,
        connection.wrap_database_errors,
        cursor.cursor.copy(f"COPY {connection.ops.quote_name(model._meta.db_table)} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            values = [row[n] if n in row else defaults[n] for n in names]
            copy.write_row([Jsonb(v) if n in wrap else v for n, v in zip(names, values, strict=True)])
