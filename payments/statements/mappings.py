"""Writes of CSV column mappings: every problem named before saving, audited changes."""

from __future__ import annotations

import codecs
import datetime as dt
from dataclasses import asdict, fields, replace

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction

from payments.models import (
    CsvColumnMapping,
    ImportStatus,
    StatementImport,
)
from payments.statements.parsers.csv_format import CsvMapping
from payments.statements.parsers.types import StatementError, check_currency
from portal.audit import audit_record, snapshot
from portal.models import Organisation
from portal.patterns import compile_pattern, pattern_problem

# Longest run of lines before the header, and widest wrapped purpose text, we accept: far
# above any real export; a larger number is a typo that would make every file "too short".
CSV_MAPPING_MAX_PREAMBLE_ROWS = 1000


CSV_MAPPING_MAX_WRAP_WIDTH = 1000


_CSV_PROBE_DATE = dt.date(2024, 12, 31)  # day > 12, so a format that swaps day and month shows


def csv_mapping_problems(mapping) -> dict[str, list[str]]:
    """Why ``mapping`` (a ``CsvMapping``) could not read a bank file, per field; empty when usable.

    Keys are the ``CsvMapping`` field names (``__all__`` for what concerns no one field), so a
    form with the same field names shows each reason beside the field it is about. The
    dataclass's own ``check()`` runs last, so nothing it refuses can be saved.
    """

    errors: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    name_length = CsvColumnMapping._meta.get_field("name").max_length
    if not (mapping.name or "").strip():
        add("name", "Give the mapping a name, e.g. the bank's; officers choose it by this name when importing.")
    elif len(mapping.name) > name_length:
        add("name", f"The name has {len(mapping.name)} characters; at most {name_length} fit.")
    if mapping.date_column is None:
        add("date_column", "Give the column that holds the booking date.")

    if not isinstance(mapping.delimiter, str) or len(mapping.delimiter) != 1:
        add(
            "delimiter",
            f"The separator must be exactly one character; {mapping.delimiter!r} is "
            f"{len(mapping.delimiter or '')}. Type \\t for a tab.",
        )
    elif mapping.delimiter in '"\r\n':
        add("delimiter", f"{mapping.delimiter!r} cannot separate columns: it is the quote character or a line break.")

    try:
        codecs.lookup(mapping.encoding)
        b"a".decode(mapping.encoding, errors="replace")  # LookupError for byte-to-byte codecs such as base64
    except (LookupError, TypeError):
        add(
            "encoding",
            f"{mapping.encoding!r} is not a text encoding Python knows; "
            "common ones are utf-8, iso-8859-1 (Latin-1), cp1252 (Windows) and utf-16.",
        )

    date_format = mapping.date_format or ""
    if "%" not in date_format:
        add("date_format", f"{date_format!r} has no date directive; write it like %d.%m.%Y or %Y-%m-%d.")
    else:
        try:
            written = _CSV_PROBE_DATE.strftime(date_format)
            read_back = dt.datetime.strptime(written, date_format).date()
        except ValueError as exc:
            add("date_format", f"{date_format!r} is not a date format Python can read ({exc}).")
        else:
            if read_back != _CSV_PROBE_DATE:
                add(
                    "date_format",
                    f"{date_format!r} does not pin down a day: 31 Dec 2024 is written {written!r} and read back "
                    f"as {read_back:%d %b %Y}. It needs the day, the month and the year (%d, %m, %Y).",
                )

    for field, limit in (
        ("preamble_rows", CSV_MAPPING_MAX_PREAMBLE_ROWS),
        ("wrapped_purpose_width", CSV_MAPPING_MAX_WRAP_WIDTH),
    ):
        value = getattr(mapping, field)
        if not isinstance(value, int) or isinstance(value, bool):
            add(field, "Give a whole number.")
        elif value < 0:
            add(field, f"This cannot be negative (it is {value}); 0 means none.")
        elif value > limit:
            add(field, f"{value} is more than the {limit} any bank's export needs; is it a typo?")

    # Direction: exactly one of a signed amount, debit + credit columns, or amount + mark column.
    # Each mistake named on the field to change; check() below backs this up.
    amount, debit, credit = mapping.amount_column, mapping.debit_column, mapping.credit_column
    direction = mapping.direction_column
    if debit is not None and credit is None:
        add("credit_column", "Debit and credit columns come in pairs: give the credit column too.")
    elif credit is not None and debit is None:
        add("debit_column", "Debit and credit columns come in pairs: give the debit column too.")
    elif debit is not None and amount is not None:
        add("amount_column", "Leave the amount column empty when the file has debit and credit columns.")
    elif amount is None and debit is None:
        add("amount_column", "Give the amount column, or the debit and credit columns.")
    if direction is not None:
        if amount is None:
            add("direction_column", "A debit/credit mark column goes with an amount column; give that too.")
        if not mapping.debit_marks:
            add("debit_marks", "Give the marks that mean a debit (e.g. S, D) when there is a mark column.")
        if not mapping.credit_marks:
            add("credit_marks", "Give the marks that mean a credit (e.g. H, C) when there is a mark column.")
    for field in ("debit_marks", "credit_marks"):
        lower = [mark for mark in getattr(mapping, field) if mark != mark.upper()]
        if lower:
            # The parser compares the cell in capitals with the marks as saved.
            add(field, f"Write marks in capitals ({', '.join(lower)}): the file's marks are compared in capitals.")
    both = sorted(set(mapping.debit_marks) & set(mapping.credit_marks))
    if both:
        add("credit_marks", f"{', '.join(both)} cannot mean both a debit and a credit.")

    if mapping.default_currency:
        if reason := check_currency(mapping.default_currency):
            add("default_currency", reason[0].upper() + reason[1:] + ".")
    elif not mapping.currency_column:
        add("default_currency", "Give the currency column, or the currency all of this file's amounts are in.")

    if (mapping.opening_balance_label or mapping.closing_balance_label) and mapping.balance_label_column is None:
        add("balance_label_column", "Give the column that holds the balance labels, or leave the labels empty.")

    # User-supplied patterns: checked and later run by one helper (portal.patterns, RE2), so a
    # pattern that could stall a worker, or that RE2 cannot run, is refused here with the reason.
    for field, needs_group in (
        ("end_to_end_pattern", True),
        ("counterparty_account_pattern", True),
        ("return_pattern", False),
    ):
        pattern = getattr(mapping, field)
        if pattern is None:
            continue
        if problem := pattern_problem(pattern):
            add(field, problem)
            continue
        if needs_group and compile_pattern(pattern).groups < 1:
            add(field, r"Put parentheses around the part to keep, e.g. EREF:\s*(\S+).")
    if not mapping.return_pattern:
        add("return_pattern", "Give the posting texts of returns (the default covers German banks).")
    elif "return_pattern" not in errors and compile_pattern(mapping.return_pattern, ignore_case=True).search(""):
        # An empty posting text would match: every line would be taken for a return, never credited.
        add("return_pattern", "This matches an empty posting text, so every line would count as a return.")

    if not errors:
        try:
            mapping.check()
        except StatementError as exc:
            add(NON_FIELD_ERRORS, str(exc))
    return errors


def _csv_mapping_in_use(provider: Organisation, name: str) -> bool:
    """An import still to read its file with this mapping (it looks the mapping up by name)."""

    return StatementImport.objects.filter(
        provider=provider, csv_mapping=name, status__in=[ImportStatus.PENDING, ImportStatus.RUNNING]
    ).exists()


def csv_mapping_save(*, provider: Organisation, name: str, mapping, actor, instance=None, ip_address=None):
    """Create (``instance`` None) or change a provider's saved CSV column mapping; validated, audited.

    ``mapping`` is a ``CsvMapping`` or a dict of its fields; its name is set to ``name``.
    Raises ``ValidationError`` per field (the ``CsvMapping`` field names, ``name`` for a name
    the provider already uses) and changes nothing on bad input. A mapping that a waiting or
    running import will look up by name keeps its name until that import has finished.
    """

    name = (name or "").strip()
    if isinstance(mapping, dict):
        unknown = sorted(set(mapping) - {item.name for item in fields(CsvMapping)})
        if unknown:
            raise ValidationError({"mapping": [f"Not CSV mapping settings: {', '.join(unknown)}."]})
        try:
            mapping = CsvMapping(**{**mapping, "name": name})
        except TypeError as exc:  # a required setting (the date column) is missing
            raise ValidationError({"mapping": [str(exc)]}) from None
    else:
        mapping = replace(mapping, name=name)
    if problems := csv_mapping_problems(mapping):
        raise ValidationError(problems)
    if instance is not None and instance.provider_id != provider.pk:
        raise ValueError("csv_mapping_save: the mapping belongs to another provider")
    # Stored as JSON; lists are what comes back, so store lists (CsvMapping(**saved) turns them back).
    stored = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(mapping).items()}
    taken = ValidationError({"name": [f"This provider already has a CSV mapping called {name!r}."]})

    with transaction.atomic():
        if instance is None:
            record, before = CsvColumnMapping(provider=provider), None
        else:
            record = CsvColumnMapping.objects.select_for_update().get(pk=instance.pk)
            before = snapshot(record, ("name", "mapping"))
            if record.name != name and _csv_mapping_in_use(provider, record.name):
                raise ValidationError(
                    {"name": ["An import waiting or running reads this mapping by its name; rename it afterwards."]}
                )
        clash = CsvColumnMapping.objects.filter(provider=provider, name=name)
        if record.pk is not None:
            clash = clash.exclude(pk=record.pk)
        if clash.exists():
            raise taken
        record.name, record.mapping = name, stored
        try:
            with transaction.atomic():
                record.save()
        except IntegrityError:
            # Race: another officer saved the same name between the check and the save.
            raise taken from None
        audit_record(
            actor=actor,
            action="csv_mapping.save",
            obj=record,
            before=before,
            after=snapshot(record, ("name", "mapping")),
            ip_address=ip_address,
        )
    return record


def csv_mapping_delete(*, mapping, actor, ip_address=None) -> None:
    """Delete a saved CSV column mapping, audited with what it was.

    Raises ``ValidationError`` while an import waiting or running still has to read its file
    with the mapping. Finished imports keep the name they were read with.
    """

    with transaction.atomic():
        record = CsvColumnMapping.objects.select_for_update().select_related("provider").get(pk=mapping.pk)
        if _csv_mapping_in_use(record.provider, record.name):
            raise ValidationError(
                "An import waiting or running reads its file with this mapping; delete it afterwards."
            )
        # Recorded before the row goes, while the event can still name its id and provider.
        audit_record(
            actor=actor,
            action="csv_mapping.delete",
            obj=record,
            before=snapshot(record, ("name", "mapping")),
            after=None,
            ip_address=ip_address,
        )
        record.delete()
