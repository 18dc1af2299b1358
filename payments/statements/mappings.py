"""Writes of CSV column mappings: every problem named before saving, audited changes."""

from __future__ import annotations

import codecs
import datetime as dt
from dataclasses import asdict, fields, replace
from typing import Any

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
from portal.types import Actor

# Longest run of lines before the header, and widest wrapped purpose text, we accept: far
# above any real export; a larger number is a typo that would make every file "too short".
CSV_MAPPING_MAX_PREAMBLE_ROWS = 1000


CSV_MAPPING_MAX_WRAP_WIDTH = 1000


_CSV_PROBE_DATE = dt.date(2024, 12, 31)  # day > 12, so a format that swaps day and month shows


class _Problems(dict[str, list[str]]):
    """Reasons per field, in the order the checks find them."""

    def add(self, field: str, message: str) -> None:
        self.setdefault(field, []).append(message)


def csv_mapping_problems(mapping: CsvMapping) -> dict[str, list[str]]:
    """Why ``mapping`` (a ``CsvMapping``) could not read a bank file, per field; empty when usable.

    Keys are the ``CsvMapping`` field names (``__all__`` for what concerns no one field), so a
    form with the same field names shows each reason beside the field it is about. The
    dataclass's own ``check()`` runs last, so nothing it refuses can be saved.
    """

    problems = _Problems()
    for check in (
        _check_name_and_date_column,
        _check_delimiter,
        _check_encoding,
        _check_date_format,
        _check_counts,
        _check_amount_columns,
        _check_marks,
        _check_currency,
        _check_balance_labels,
        _check_patterns,
        _check_return_pattern,
    ):
        check(mapping, problems)
    if not problems:
        try:
            mapping.check()
        except StatementError as exc:
            problems.add(NON_FIELD_ERRORS, str(exc))
    return dict(problems)


def _check_name_and_date_column(mapping: CsvMapping, problems: _Problems) -> None:
    name_length = CsvColumnMapping._meta.get_field("name").max_length
    if not (mapping.name or "").strip():
        problems.add(
            "name", "Give the mapping a name, e.g. the bank's; officers choose it by this name when importing."
        )
    elif name_length is not None and len(mapping.name) > name_length:
        problems.add("name", f"The name has {len(mapping.name)} characters; at most {name_length} fit.")
    if mapping.date_column is None:
        problems.add("date_column", "Give the column that holds the booking date.")


def _check_delimiter(mapping: CsvMapping, problems: _Problems) -> None:
    if not isinstance(mapping.delimiter, str) or len(mapping.delimiter) != 1:
        problems.add(
            "delimiter",
            f"The separator must be exactly one character; {mapping.delimiter!r} is "
            f"{len(mapping.delimiter or '')}. Type \\t for a tab.",
        )
    elif mapping.delimiter in '"\r\n':
        problems.add(
            "delimiter", f"{mapping.delimiter!r} cannot separate columns: it is the quote character or a line break."
        )


def _check_encoding(mapping: CsvMapping, problems: _Problems) -> None:
    try:
        codecs.lookup(mapping.encoding)
        b"a".decode(mapping.encoding, errors="replace")  # LookupError for byte-to-byte codecs such as base64
    except (LookupError, TypeError):
        problems.add(
            "encoding",
            f"{mapping.encoding!r} is not a text encoding Python knows; "
            "common ones are utf-8, iso-8859-1 (Latin-1), cp1252 (Windows) and utf-16.",
        )


def _check_date_format(mapping: CsvMapping, problems: _Problems) -> None:
    date_format = mapping.date_format or ""
    if "%" not in date_format:
        problems.add("date_format", f"{date_format!r} has no date directive; write it like %d.%m.%Y or %Y-%m-%d.")
        return
    try:
        written = _CSV_PROBE_DATE.strftime(date_format)
        read_back = dt.datetime.strptime(written, date_format).date()
    except ValueError as exc:
        problems.add("date_format", f"{date_format!r} is not a date format Python can read ({exc}).")
        return
    if read_back != _CSV_PROBE_DATE:
        problems.add(
            "date_format",
            f"{date_format!r} does not pin down a day: 31 Dec 2024 is written {written!r} and read back "
            f"as {read_back:%d %b %Y}. It needs the day, the month and the year (%d, %m, %Y).",
        )


def _check_counts(mapping: CsvMapping, problems: _Problems) -> None:
    for field, limit in (
        ("preamble_rows", CSV_MAPPING_MAX_PREAMBLE_ROWS),
        ("wrapped_purpose_width", CSV_MAPPING_MAX_WRAP_WIDTH),
    ):
        value = getattr(mapping, field)
        if not isinstance(value, int) or isinstance(value, bool):
            problems.add(field, "Give a whole number.")
        elif value < 0:
            problems.add(field, f"This cannot be negative (it is {value}); 0 means none.")
        elif value > limit:
            problems.add(field, f"{value} is more than the {limit} any bank's export needs; is it a typo?")


def _check_amount_columns(mapping: CsvMapping, problems: _Problems) -> None:
    # Direction: exactly one of a signed amount, debit + credit columns, or amount + mark column.
    # Each mistake named on the field to change; check() backs this up.
    amount, debit, credit = mapping.amount_column, mapping.debit_column, mapping.credit_column
    if debit is not None and credit is None:
        problems.add("credit_column", "Debit and credit columns come in pairs: give the credit column too.")
    elif credit is not None and debit is None:
        problems.add("debit_column", "Debit and credit columns come in pairs: give the debit column too.")
    elif debit is not None and amount is not None:
        problems.add("amount_column", "Leave the amount column empty when the file has debit and credit columns.")
    elif amount is None and debit is None:
        problems.add("amount_column", "Give the amount column, or the debit and credit columns.")
    if mapping.direction_column is not None:
        if amount is None:
            problems.add("direction_column", "A debit/credit mark column goes with an amount column; give that too.")
        if not mapping.debit_marks:
            problems.add("debit_marks", "Give the marks that mean a debit (e.g. S, D) when there is a mark column.")
        if not mapping.credit_marks:
            problems.add("credit_marks", "Give the marks that mean a credit (e.g. H, C) when there is a mark column.")


def _check_marks(mapping: CsvMapping, problems: _Problems) -> None:
    for field in ("debit_marks", "credit_marks"):
        lower = [mark for mark in getattr(mapping, field) if mark != mark.upper()]
        if lower:
            # The parser compares the cell in capitals with the marks as saved.
            problems.add(
                field, f"Write marks in capitals ({', '.join(lower)}): the file's marks are compared in capitals."
            )
    both = sorted(set(mapping.debit_marks) & set(mapping.credit_marks))
    if both:
        problems.add("credit_marks", f"{', '.join(both)} cannot mean both a debit and a credit.")


def _check_currency(mapping: CsvMapping, problems: _Problems) -> None:
    if mapping.default_currency:
        if reason := check_currency(mapping.default_currency):
            problems.add("default_currency", reason[0].upper() + reason[1:] + ".")
    elif not mapping.currency_column:
        problems.add("default_currency", "Give the currency column, or the currency all of this file's amounts are in.")


def _check_balance_labels(mapping: CsvMapping, problems: _Problems) -> None:
    if (mapping.opening_balance_label or mapping.closing_balance_label) and mapping.balance_label_column is None:
        problems.add(
            "balance_label_column", "Give the column that holds the balance labels, or leave the labels empty."
        )


def _check_patterns(mapping: CsvMapping, problems: _Problems) -> None:
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
            problems.add(field, problem)
            continue
        if needs_group and compile_pattern(pattern).groups < 1:
            problems.add(field, r"Put parentheses around the part to keep, e.g. EREF:\s*(\S+).")


def _check_return_pattern(mapping: CsvMapping, problems: _Problems) -> None:
    if not mapping.return_pattern:
        problems.add("return_pattern", "Give the posting texts of returns (the default covers German banks).")
    elif "return_pattern" not in problems and compile_pattern(mapping.return_pattern, ignore_case=True).search(""):
        # An empty posting text would match: every line would be taken for a return, never credited.
        problems.add("return_pattern", "This matches an empty posting text, so every line would count as a return.")


def _csv_mapping_in_use(provider: Organisation, name: str) -> bool:
    """An import still to read its file with this mapping (it looks the mapping up by name)."""

    return StatementImport.objects.filter(
        provider=provider, csv_mapping=name, status__in=[ImportStatus.PENDING, ImportStatus.RUNNING]
    ).exists()


def _mapping_named(mapping: CsvMapping | dict[str, Any], name: str) -> CsvMapping:
    """``mapping`` as a ``CsvMapping`` called ``name``; a dict of anything but its settings is refused."""
    if not isinstance(mapping, dict):
        return replace(mapping, name=name)
    unknown = sorted(set(mapping) - {item.name for item in fields(CsvMapping)})
    if unknown:
        raise ValidationError({"mapping": [f"Not CSV mapping settings: {', '.join(unknown)}."]})
    try:
        return CsvMapping(**{**mapping, "name": name})
    except TypeError as exc:  # a required setting (the date column) is missing
        raise ValidationError({"mapping": [str(exc)]}) from None


def csv_mapping_save(
    *,
    provider: Organisation,
    name: str,
    mapping: CsvMapping | dict[str, Any],
    actor: Actor,
    instance: CsvColumnMapping | None = None,
    ip_address: str | None = None,
) -> CsvColumnMapping:
    """Create (``instance`` None) or change a provider's saved CSV column mapping; validated, audited.

    ``mapping`` is a ``CsvMapping`` or a dict of its fields; its name is set to ``name``.
    Raises ``ValidationError`` per field (the ``CsvMapping`` field names, ``name`` for a name
    the provider already uses) and changes nothing on bad input. A mapping that a waiting or
    running import will look up by name keeps its name until that import has finished.
    """

    name = (name or "").strip()
    named = _mapping_named(mapping, name)
    if problems := csv_mapping_problems(named):
        raise ValidationError(problems)
    if instance is not None and instance.provider_id != provider.pk:
        raise ValueError("csv_mapping_save: the mapping belongs to another provider")
    # Stored as JSON; lists are what comes back, so store lists (CsvMapping(**saved) turns them back).
    stored = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(named).items()}
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


def csv_mapping_delete(*, mapping: CsvColumnMapping, actor: Actor, ip_address: str | None = None) -> None:
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
