"""The device registry: registering and changing devices, one at a time or from a CSV (bulk upload)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from devices.models import (
    Device,
    max_length,
    normalise_imei,
)
from portal.audit import AuditEntry, audit_record, audit_record_many, audited_update, snapshot
from portal.models import Organisation
from portal.types import Actor

DEVICE_FIELDS = ("imei", "imei2", "serial_number", "maker", "model")
FIELD_LIMITS = {f: max_length(Device, f) for f in DEVICE_FIELDS}


def _clean_device_fields(
    *, provider: Organisation, data: dict[str, Any], exclude_pk: int | None = None
) -> dict[str, str]:
    """Validate and normalise device fields; raises ``ValidationError`` keyed by field."""
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, str] = {}
    for name in DEVICE_FIELDS:
        value = data.get(name)
        value = "" if value is None else str(value).strip()
        if name in ("imei", "imei2") and value:
            try:
                value = normalise_imei(value)
            except ValidationError as exc:
                errors.setdefault(name, []).extend(exc.messages)
                continue
        if len(value) > FIELD_LIMITS[name]:
            errors.setdefault(name, []).append(f"At most {FIELD_LIMITS[name]} characters.")
        cleaned[name] = value
    if not data.get("imei") and "imei" not in errors:
        errors["imei"] = ["This field is required."]
    if cleaned.get("imei") and cleaned.get("imei") == cleaned.get("imei2"):
        errors["imei2"] = ["The second IMEI must differ from the first."]
    if not errors and cleaned.get("imei"):
        clash = Device.objects.filter(provider=provider, imei=cleaned["imei"])
        if exclude_pk:
            clash = clash.exclude(pk=exclude_pk)
        if clash.exists():
            errors["imei"] = ["A device with this IMEI is already registered for this provider."]
    if errors:
        raise ValidationError(errors)
    return cleaned


def device_create(*, provider: Organisation, actor: Actor, ip_address: str | None = None, **data: Any) -> Device:
    """Register one device for ``provider``; audited."""
    cleaned = _clean_device_fields(provider=provider, data=data)
    try:
        with transaction.atomic():
            device = Device.objects.create(provider=provider, **cleaned)
            audit_record(actor=actor, action="device.create", obj=device, after=snapshot(device), ip_address=ip_address)
    except IntegrityError:
        # Race: two requests registering the same IMEI at once; the unique
        # constraint lets one win and this one reports the clash.
        raise ValidationError({"imei": ["A device with this IMEI is already registered for this provider."]}) from None
    return device


def device_update(*, device: Device, actor: Actor, ip_address: str | None = None, **changes: Any) -> Device:
    """Change a device's identifying fields; audited with before and after (only when something changed)."""
    data = {name: getattr(device, name) for name in DEVICE_FIELDS} | changes
    cleaned = _clean_device_fields(provider=device.provider, data=data, exclude_pk=device.pk)
    with transaction.atomic():
        if any(getattr(device, name) != value for name, value in cleaned.items()):
            audited_update(
                device,
                actor=actor,
                action="device.update",
                changes={**cleaned, "updated_at": timezone.now()},
                fields=DEVICE_FIELDS,
                ip_address=ip_address,
                clean=False,  # checked above, with the messages the forms and the API show
            )
        else:
            device.save(update_fields=["updated_at"])  # as a plain save did: touched, nothing to audit
    return device


@dataclass
class BulkReport:
    """Outcome of a bulk upload: every line either created or reported."""

    mode: str
    rows: int = 0
    created: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return self.created > 0 or (self.rows > 0 and not self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rows": self.rows,
            "created": self.created,
            "rejected": len({e["line"] for e in self.errors}),
            "errors": self.errors,
        }


class BulkUploadError(ValueError):
    """The file as a whole cannot be read (encoding, header, size)."""


ALL_OR_NOTHING = "all_or_nothing"
VALID_ROWS_ONLY = "valid_rows_only"


def bulk_upload_check_size(size: int) -> None:
    """Refuse a file over ``BULK_UPLOAD_MAX_BYTES``; callers check before reading it into memory."""
    limit = settings.BULK_UPLOAD_MAX_BYTES
    if size > limit:
        # Whole MB for the real limit; bytes for a small configured one ("0 MB" said nothing).
        label = f"{limit // (1024 * 1024)} MB" if limit >= 1024 * 1024 else f"{limit:,} bytes"
        raise BulkUploadError(f"The file is larger than {label}; split it.")


def _read_csv(raw: bytes) -> tuple[list[str], csv.DictReader[str]]:
    bulk_upload_check_size(len(raw))
    if b"\x00" in raw:
        raise BulkUploadError("The file is not a text CSV (it contains NUL bytes).")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BulkUploadError(
            f"The file is not UTF-8 (byte {exc.start + 1} cannot be decoded); save it as UTF-8 CSV."
        ) from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if not header:
        raise BulkUploadError("The file is empty; the first line must be a header with at least an imei column.")
    if "imei" not in header:
        raise BulkUploadError(f"The header has no imei column (found: {', '.join(header) or 'nothing'}).")
    blank = [str(i) for i, h in enumerate(header, start=1) if not h]
    if blank:
        raise BulkUploadError(f"Column(s) {', '.join(blank)} of the header have no name (a stray delimiter?).")
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        # A dict per row would keep only the last of the two columns, silently.
        raise BulkUploadError(f"Column(s) {', '.join(twice)} appear more than once in the header.")
    unknown = [h for h in header if h not in DEVICE_FIELDS]
    if unknown:
        raise BulkUploadError(f"Unknown column(s) {', '.join(unknown)}; allowed: {', '.join(DEVICE_FIELDS)}.")
    reader.fieldnames = header
    return header, reader


def device_bulk_upload(
    *, provider: Organisation, actor: Actor, raw: bytes, mode: str = ALL_OR_NOTHING, ip_address: str | None = None
) -> BulkReport:
    """Register many devices from a CSV, reporting every rejected line with its reason.

    ``all_or_nothing`` creates nothing if any line is bad; ``valid_rows_only``
    creates the good lines and reports the rest. Checks against existing
    devices are one set-based query, and inserts are batched.
    """
    if mode not in (ALL_OR_NOTHING, VALID_ROWS_ONLY):
        raise BulkUploadError(f"mode must be {ALL_OR_NOTHING} or {VALID_ROWS_ONLY}")
    _header, reader = _read_csv(raw)
    report = BulkReport(mode=mode)
    candidates = _read_rows(reader, report)
    fresh = _not_yet_registered(provider, candidates, report)
    report.errors.sort(key=lambda e: e["line"])
    if (report.errors and mode == ALL_OR_NOTHING) or not fresh:
        return report
    report.created = _create_devices(provider, fresh, actor=actor, ip_address=ip_address)
    return report


def _read_rows(reader: csv.DictReader[str], report: BulkReport) -> list[tuple[int, dict[str, str]]]:
    """Check every line on its own and against the lines before it; the good ones as ``(line, values)``."""
    candidates: list[tuple[int, dict[str, str]]] = []
    seen: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            report.rows += 1
            if report.rows > settings.BULK_UPLOAD_MAX_ROWS:
                raise BulkUploadError(f"The file has more than {settings.BULK_UPLOAD_MAX_ROWS:,} rows; split it.")
            if None in row:
                report.errors.append(
                    {"line": line, "field": None, "message": "This line has more columns than the header."}
                )
                continue
            values = {k: (v or "").strip() for k, v in row.items()}
            row_errors = _row_errors(values)
            if not row_errors:
                imei = values["imei"]
                if imei in seen:
                    row_errors.append(("imei", f"Duplicate of line {seen[imei]} in this file."))
                else:
                    seen[imei] = line
            for fld, msg in row_errors:
                report.errors.append({"line": line, "field": fld, "message": msg})
            if not row_errors:
                candidates.append((line, values))
    except csv.Error as exc:
        raise BulkUploadError(f"Line {reader.line_num}: the CSV is malformed ({exc}).") from None
    if report.rows == 0:
        raise BulkUploadError("The file has a header but no rows.")
    return candidates


def _not_yet_registered(
    provider: Organisation, candidates: list[tuple[int, dict[str, str]]], report: BulkReport
) -> list[dict[str, str]]:
    """The candidates whose IMEI the provider has not registered yet; the others reported (set-based)."""
    existing: set[str] = set()
    imeis = [v["imei"] for _line, v in candidates]
    for start in range(0, len(imeis), 5000):
        existing.update(
            Device.objects.filter(provider=provider, imei__in=imeis[start : start + 5000]).values_list(
                "imei", flat=True
            )
        )
    fresh = []
    for line, values in candidates:
        if values["imei"] in existing:
            report.errors.append({"line": line, "field": "imei", "message": "Already registered for this provider."})
        else:
            fresh.append(values)
    return fresh


def _create_devices(
    provider: Organisation, fresh: list[dict[str, str]], *, actor: Actor, ip_address: str | None
) -> int:
    """Insert the devices in batches and audit each (``device.create``); the number created."""
    try:
        with transaction.atomic():
            devices = Device.objects.bulk_create(
                [
                    Device(provider=provider, **{k: v for k, v in values.items() if k in DEVICE_FIELDS})
                    for values in fresh
                ],
                batch_size=2000,
            )
            if devices and devices[0].pk is None:  # backends without RETURNING: fetch the ids
                by_imei = dict(
                    Device.objects.filter(provider=provider, imei__in=[d.imei for d in devices]).values_list(
                        "imei", "id"
                    )
                )
                for d in devices:
                    d.pk = by_imei[d.imei]
            audit_record_many(
                actor=actor,
                ip_address=ip_address,
                entries=[AuditEntry(action="device.create", obj=d, after=snapshot(d, DEVICE_FIELDS)) for d in devices],
            )
    except IntegrityError:
        # Race: another request registered one of these IMEIs between the check
        # above and the insert; the unique constraint refused the whole batch.
        raise BulkUploadError(
            "Another request registered some of these IMEIs meanwhile; nothing was created. "
            "Upload the file again to see which lines are affected."
        ) from None
    return len(devices)


def _row_errors(values: dict[str, str]) -> list[tuple[str, str]]:
    errors = []
    for name in DEVICE_FIELDS:
        value = values.get(name, "")
        if name in ("imei", "imei2"):
            if not value:
                if name == "imei":
                    errors.append((name, "This field is required."))
                continue
            try:
                # Check the length of the digits, not of "35 209900 176148 1" as typed.
                value = values[name] = normalise_imei(value)
            except ValidationError as exc:
                errors.append((name, exc.messages[0]))
                continue
        if len(value) > FIELD_LIMITS[name]:
            errors.append((name, f"At most {FIELD_LIMITS[name]} characters."))
    if values.get("imei") and values.get("imei") == values.get("imei2"):
        errors.append(("imei2", "The second IMEI must differ from the first."))
    return errors
