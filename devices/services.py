"""Writes of the device registry."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import logging
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.db.models.functions import Left
from django.http import Http404
from django.utils import timezone
from django.utils.crypto import salted_hmac
from openpaygo import TokenType, generate_token
from openpaygo.token_shared import OpenPAYGOTokenShared

from devices import checkin_cache, mqtt_accounts
from devices.delivery import commands_enqueue
from devices.keys import current_signer, public_keys
from devices.models import (
    Device,
    DeviceCommand,
    EnrollmentToken,
    LockState,
    OfflineCode,
    OfflineCodeKind,
    normalise_imei,
)
from devices.protocol import (
    PROTOCOL_VERSION,
    STATES,
    b64,
    enrollment_message,
    public_key_from_b64,
    sign,
    topic_for,
    unb64,
)
from portal.audit import AuditEntry, audit_record, audit_record_many, snapshot
from portal.four_eyes import four_eyes_check
from portal.models import Organisation, OrganisationKind, User
from portal.permissions import Right, has_right, visible_provider_ids

log = logging.getLogger(__name__)

DEVICE_FIELDS = ("imei", "imei2", "serial_number", "maker", "model")
FIELD_LIMITS = {f: Device._meta.get_field(f).max_length for f in DEVICE_FIELDS}


def _clean_device_fields(*, provider: Organisation, data: dict, exclude_pk: int | None = None) -> dict:
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


def device_create(*, provider: Organisation, actor, ip_address: str | None = None, **data) -> Device:
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


def device_update(*, device: Device, actor, ip_address: str | None = None, **changes) -> Device:
    """Change a device's identifying fields; audited with before and after."""
    data = {name: getattr(device, name) for name in DEVICE_FIELDS} | changes
    cleaned = _clean_device_fields(provider=device.provider, data=data, exclude_pk=device.pk)
    with transaction.atomic():
        before = snapshot(device, DEVICE_FIELDS)
        for name, value in cleaned.items():
            setattr(device, name, value)
        device.save()
        after = snapshot(device, DEVICE_FIELDS)
        if before != after:
            audit_record(
                actor=actor, action="device.update", obj=device, before=before, after=after, ip_address=ip_address
            )
    return device


@dataclass
class BulkReport:
    """Outcome of a bulk upload: every line either created or reported."""

    mode: str
    rows: int = 0
    created: int = 0
    errors: list[dict] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return self.created > 0 or (self.rows > 0 and not self.errors)

    def as_dict(self) -> dict:
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


def _read_csv(raw: bytes) -> tuple[list[str], csv.DictReader]:
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
    *, provider: Organisation, actor, raw: bytes, mode: str = ALL_OR_NOTHING, ip_address: str | None = None
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
    candidates: list[tuple[int, dict]] = []
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

    existing = set()
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
    report.errors.sort(key=lambda e: e["line"])
    if report.errors and mode == ALL_OR_NOTHING:
        return report
    if not fresh:
        return report
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
    report.created = len(devices)
    return report


def _row_errors(values: dict) -> list[tuple[str, str]]:
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


# --- Lock-state commands: the outbox (docs/lock-pipeline.md) --------------------------

# Ids per SELECT ... FOR UPDATE and rows per bulk write: well under every backend's
# limit on query parameters, and few enough round trips for 10,000 changes at once.
LOCK_BATCH = 5000
WRITE_BATCH = 1000
REASON_LENGTH = Device._meta.get_field("desired_reason").max_length


@dataclass(frozen=True)
class StateChange:
    """One change of a device's desired lock state, with what the phone shows for it.

    ``screen`` and ``allowed_numbers`` travel inside the signed command as they are, so
    they may hold only strings, integers, booleans, None, lists and dicts (amounts as
    decimal strings): every implementation must produce the same canonical bytes.
    ``expires_at`` is required for ``temp_unlocked`` and refused for any other state.
    """

    device_id: int
    state: str
    reason: str = ""
    screen: dict = field(default_factory=dict)
    allowed_numbers: list[str] = field(default_factory=list)
    expires_at: dt.datetime | None = None


def _wire_time(value: dt.datetime) -> str:
    """ISO 8601 UTC with a ``Z``, to the second: the form every command carries."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_wire_value(value, where: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_wire_value(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            _check_wire_value(item, f"{where}.{key}")
        return
    # Floats print differently across languages and Decimals are not JSON at all:
    # either would break the signature on the phone (amounts are decimal strings).
    raise ValueError(f"{where} is a {type(value).__name__}; a command holds only str, int, bool, None, list, dict")


def _check_change(change: StateChange) -> None:
    if change.state not in STATES:
        raise ValueError(f"device {change.device_id}: unknown state {change.state!r}")
    if (change.state == LockState.TEMP_UNLOCKED) != (change.expires_at is not None):
        raise ValueError(f"device {change.device_id}: expires_at is required for temp_unlocked and only for it")
    if change.expires_at is not None and timezone.is_naive(change.expires_at):
        raise ValueError(f"device {change.device_id}: expires_at must be timezone-aware")
    if not isinstance(change.screen, dict):
        raise ValueError(f"device {change.device_id}: screen must be a dict")
    if not isinstance(change.allowed_numbers, list | tuple) or not all(
        isinstance(n, str) for n in change.allowed_numbers
    ):
        raise ValueError(f"device {change.device_id}: allowed_numbers must be a list of strings")
    _check_wire_value(change.screen, "screen")


def device_states_apply(*, changes: list[StateChange], actor=None) -> list[DeviceCommand]:
    """Record desired lock states and issue one signed command per change (the outbox).

    All in one transaction, the caller's if there is one: the devices' rows are
    locked, each change takes the device's next sequence number, the command is
    built exactly as docs/lock-pipeline.md specifies and signed with the current
    key, and every change is audited (``device.state``, before and after). Several
    changes for one device are applied in the given order, each with its own seq.
    Set-based: a fixed number of queries per batch of rows, so 10,000 changes take
    seconds. Delivery (push) is queued only once the transaction commits; until a
    worker delivers it, the command is served by the phone's check-in (pull).
    """
    if not changes:
        return []
    for change in changes:
        _check_change(change)
    key_id, private_key = current_signer()
    now = timezone.now()
    issued_at = now.replace(microsecond=0)
    issued_text = _wire_time(issued_at)
    ids = sorted({change.device_id for change in changes})
    with transaction.atomic():
        devices: dict[int, Device] = {}
        for start in range(0, len(ids), LOCK_BATCH):
            # Race: the sweep and a verified payment changing the same device at once
            # would both read command_seq and issue the same seq; the row locks
            # serialise them, and taking them in id order prevents deadlocks.
            batch = Device.objects.select_for_update().filter(pk__in=ids[start : start + LOCK_BATCH]).order_by("id")
            devices.update((device.pk, device) for device in batch)
        missing = [pk for pk in ids if pk not in devices]
        if missing:
            raise Device.DoesNotExist(f"No device with id {', '.join(map(str, missing[:10]))}")
        commands: list[DeviceCommand] = []
        entries: list[AuditEntry] = []
        for change in changes:
            device = devices[change.device_id]
            before = {"state": device.desired_state, "reason": device.desired_reason, "seq": device.command_seq}
            reason = change.reason[: DeviceCommand._meta.get_field("reason").max_length]
            expires_at = change.expires_at.replace(microsecond=0) if change.expires_at else None
            device.command_seq += 1
            device.desired_state = change.state
            device.desired_reason = reason[:REASON_LENGTH]
            device.desired_changed_at = now
            device.updated_at = now
            payload = {
                "v": PROTOCOL_VERSION,
                "device": str(device.uid),
                "imei": device.imei,
                "seq": device.command_seq,
                "state": change.state,
                "reason": reason,
                "issued_at": issued_text,
                "expires_at": _wire_time(expires_at) if expires_at else None,
                "key_id": key_id,
                "screen": change.screen,
                "allowed_numbers": list(change.allowed_numbers),
            }
            envelope = sign(payload, private_key)
            commands.append(
                DeviceCommand(
                    device=device,
                    seq=device.command_seq,
                    state=change.state,
                    reason=reason,
                    expires_at=expires_at,
                    payload=payload,
                    signature=envelope["signature"],
                    key_id=key_id,
                    issued_at=issued_at,
                    next_attempt_at=now,
                )
            )
            entries.append(
                AuditEntry(
                    action="device.state",
                    obj=device,
                    before=before,
                    after={
                        "state": change.state,
                        "reason": reason,
                        "seq": device.command_seq,
                        "expires_at": expires_at,
                    },
                )
            )
        DeviceCommand.objects.bulk_create(commands, batch_size=WRITE_BATCH)
        # Each device row now mirrors its newest command: one UPDATE per batch with
        # correlated subqueries on the (device, seq) index. bulk_update's CASE per
        # row costs seconds per thousand devices; this stays set-based.
        newest = DeviceCommand.objects.filter(device_id=OuterRef("pk")).order_by("-seq")
        for start in range(0, len(ids), LOCK_BATCH):
            Device.objects.filter(pk__in=ids[start : start + LOCK_BATCH]).update(
                command_seq=Subquery(newest.values("seq")[:1]),
                desired_state=Subquery(newest.values("state")[:1]),
                desired_reason=Left(Subquery(newest.values("reason")[:1]), REASON_LENGTH),
                desired_changed_at=now,
                updated_at=now,
            )
        if commands[0].pk is None:  # backends without RETURNING: fetch the ids
            by_key = {
                (d, s): pk
                for d, s, pk in DeviceCommand.objects.filter(device_id__in=ids, issued_at=issued_at).values_list(
                    "device_id", "seq", "id"
                )
            }
            for command in commands:
                command.pk = by_key[(command.device_id, command.seq)]
        audit_record_many(actor=actor, entries=entries)
        command_ids = [command.pk for command in commands]
        transaction.on_commit(lambda: _enqueue_delivery(command_ids))
        # A phone checking in must be answered this new command, not a cached older one.
        checkin_cache.invalidate_on_commit(ids)
    return commands


def _enqueue_delivery(command_ids: list[int]) -> None:
    """Hand committed commands to the push workers (``devices.deliver_command``).

    Never raises: the caller's change is committed already. Nothing is lost when this
    fails: every command is an outbox row with ``next_attempt_at`` set, so the periodic
    redelivery job picks it up once the broker is back, and the phone's check-in (pull)
    serves it meanwhile.
    """
    commands_enqueue(command_ids)


def _latest_command(device_id: int) -> DeviceCommand | None:
    return DeviceCommand.objects.filter(device_id=device_id).order_by("-seq").first()


def _reissue_current_state(device: Device, *, latest: DeviceCommand | None, actor=None) -> DeviceCommand:
    """Issue the device's desired state again, with the newest command's screen if there is one."""
    state, expires_at = device.desired_state, None
    if state == LockState.TEMP_UNLOCKED:
        expires_at = latest.expires_at if latest is not None and latest.state == state else None
        if expires_at is None or expires_at <= timezone.now():
            # A temporary unlock with no known end: normal use is what it granted; the
            # next sweep decides again from the contract.
            state, expires_at = LockState.UNLOCKED, None
    payload = latest.payload if latest is not None else {}
    (command,) = device_states_apply(
        changes=[
            StateChange(
                device_id=device.pk,
                state=state,
                reason=device.desired_reason,
                screen=payload.get("screen") or {},
                allowed_numbers=payload.get("allowed_numbers") or [],
                expires_at=expires_at,
            )
        ],
        actor=actor,
    )
    return command


def device_current_envelope(device: Device) -> dict:
    """The signed envelope of the device's newest command, issuing a first one if it has none.

    A device that never had a command gets its current desired state (``unlocked``
    for a new device, but never an unlock of a device already meant to be locked),
    so check-in and enrolment always answer a signed command.
    """
    # Every check-in comes here: read just the two columns, no model instance.
    latest_row = (
        DeviceCommand.objects.filter(device_id=device.pk).order_by("-seq").values_list("payload", "signature")[:1]
    )
    for payload, signature in latest_row:
        return {"command": payload, "signature": signature}
    with transaction.atomic():
        # Race: two check-ins of a never-commanded device at once would each issue a
        # first command; with the row locked the second sees the first's command.
        locked = Device.objects.select_for_update().get(pk=device.pk)
        latest = _latest_command(device.pk)
        if latest is None:
            latest = _reissue_current_state(locked, latest=None)
    return latest.envelope


# --- Enrolment ------------------------------------------------------------------------

ENROLMENT_REFUSED = (
    "Enrolment refused: check the IMEI and the enrolment token. A phone that enrolled before must sign "
    "with its device key, or use a re-enrolment code from its provider."
)
CREDENTIAL_PREFIX = "fld_"
ENROLLMENT_TOKEN_PREFIX = "fle_"
# Re-enrolment codes: 16 characters of Crockford's base32 (80 bits), typed by a person on the phone.
REENROLLMENT_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REENROLLMENT_CODE_LENGTH = 16
# Refused attempts on an enrolled device are audited at most once per device this often: the
# enrolment throttle bounds each address, this bounds what many addresses can write.
REFUSED_AUDIT_EVERY = dt.timedelta(minutes=1)

_CHALLENGE_SALT = "finlock.devices.enroll-challenge"
_CHALLENGE_VERSION = 1
_CHALLENGE_BODY = 1 + 8 + 16  # version, issue time (µs since the epoch, big-endian), nonce
_CHALLENGE_LENGTH = _CHALLENGE_BODY + 32  # + HMAC-SHA256
# A challenge issued by another server whose clock runs slightly ahead is still fresh.
_CHALLENGE_SKEW = dt.timedelta(seconds=5)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class EnrollmentRefused(ValidationError):
    """The one answer to every refused enrolment: it never says whether the IMEI, the token or the proof was wrong."""

    def __init__(self):
        super().__init__(ENROLMENT_REFUSED, code="enrolment_refused")


class EnrolmentProof:
    """How an enrolment was proven (recorded in the audit trail)."""

    FIRST = "first_enrolment"  # the device never enrolled: the token suffices (the key is registered)
    DEVICE_KEY = "device_key"  # signed with the key the device registered
    CODE = "reenrollment_code"  # a one-time code staff issued for this device (a new key is registered)


def secret_digest(secret: str) -> str:
    """SHA-256 hex of a device credential or enrolment token: only this is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def device_key_fingerprint(device_key: str) -> str:
    """A short, stable name of a device public key for people and the audit trail (``SHA256:`` + 16 hex)."""
    if not device_key:
        return ""
    return "SHA256:" + hashlib.sha256(unb64(device_key)).hexdigest()[:16]


def _exact_b64(text, length: int) -> bytes | None:
    """The bytes of standard base64 with padding that decodes to exactly ``length`` bytes, else None.

    Only the canonical text of those bytes is accepted, so one key has one spelling
    (the signed message contains the key as sent).
    """
    if not isinstance(text, str):
        return None
    try:
        raw = unb64(text)
    except ValueError:
        return None
    return raw if len(raw) == length and b64(raw) == text else None


def _challenge_mac(body: bytes) -> bytes:
    return salted_hmac(_CHALLENGE_SALT, body, algorithm="sha256").digest()


def enrollment_challenge_issue(*, now: dt.datetime | None = None) -> dict:
    """A fresh enrolment challenge for a phone to sign (docs/lock-pipeline.md, "Enrolment").

    Stateless: the issue time travels inside the challenge under an HMAC keyed with the
    server's secret key, so any server process can check it without storing anything.
    It names no device and needs no token: the answer is the same for everyone and tells
    nothing about which IMEIs exist. ``{"challenge": <base64>, "expires_in": seconds}``.
    """
    now = now or timezone.now()
    micros = (now - _EPOCH) // dt.timedelta(microseconds=1)  # exact: no float on the way
    body = bytes([_CHALLENGE_VERSION]) + micros.to_bytes(8, "big") + secrets.token_bytes(16)
    return {"challenge": b64(body + _challenge_mac(body)), "expires_in": settings.DEVICE_ENROLL_CHALLENGE_SECONDS}


def _challenge_issued_at(challenge, now: dt.datetime) -> dt.datetime | None:
    """The issue time of a challenge this server family made and that is still fresh, else None."""
    raw = _exact_b64(challenge, _CHALLENGE_LENGTH)
    if raw is None or raw[0] != _CHALLENGE_VERSION:
        return None
    body, mac = raw[:_CHALLENGE_BODY], raw[_CHALLENGE_BODY:]
    if not hmac.compare_digest(mac, _challenge_mac(body)):
        return None
    issued_at = _EPOCH + dt.timedelta(microseconds=int.from_bytes(body[1:9], "big"))
    age = now - issued_at
    if age > dt.timedelta(seconds=settings.DEVICE_ENROLL_CHALLENGE_SECONDS) or age < -_CHALLENGE_SKEW:
        return None
    return issued_at


def _normalise_reenrollment_code(text: str) -> str | None:
    """The 16 characters of a re-enrolment code as typed ("7K2M-9QXD-..."), or None if it cannot be one."""
    value = "".join(ch for ch in str(text).upper() if ch not in " -\t")
    value = value.translate(str.maketrans({"O": "0", "I": "1", "L": "1"}))  # Crockford: read-alike letters
    if len(value) != REENROLLMENT_CODE_LENGTH or any(ch not in REENROLLMENT_CODE_ALPHABET for ch in value):
        return None
    return value


def _reenrollment_code_digest(device: Device, code: str) -> str:
    # Bound to the device: the same characters are worthless for any other device.
    return secret_digest(f"{device.uid}:{code}")


def _enrollment_token_check(*, name: str, shop: str, max_uses) -> tuple[str, str]:
    name = (name or "").strip()
    shop = (shop or "").strip()
    max_name = EnrollmentToken._meta.get_field("name").max_length
    max_shop = EnrollmentToken._meta.get_field("shop").max_length
    errors: dict[str, list[str]] = {}
    if not name or len(name) > max_name:
        errors["name"] = [f"Give the token a name of 1 to {max_name} characters."]
    if len(shop) > max_shop:
        errors["shop"] = [f"At most {max_shop} characters (this has {len(shop)})."]
    if max_uses is not None and (not isinstance(max_uses, int) or isinstance(max_uses, bool) or max_uses < 1):
        errors["max_uses"] = ["A whole number of phones, at least 1 (or empty for no limit)."]
    if errors:
        raise ValidationError(errors)
    return name, shop


ENROLLMENT_TOKEN_AUDIT_FIELDS = ("name", "shop", "provider", "expires_at", "max_uses", "revoked_at", "created_by")


def enrollment_token_create(
    *,
    provider: Organisation,
    name: str,
    actor,
    expires_at: dt.datetime | None = None,
    shop: str = "",
    max_uses: int | None = None,
    ip_address: str | None = None,
) -> tuple[EnrollmentToken, str]:
    """Create a provider's enrolment token; returns the row and the secret (shown once, only its digest is kept).

    ``shop`` labels where it is used (recorded with each enrolment), ``max_uses`` caps the
    phones it may enrol for the first time, ``expires_at`` ends it. Audited.
    """
    if provider.kind != OrganisationKind.PROVIDER:
        raise ValidationError({"provider": ["Only a financing provider enrols devices."]})
    name, shop = _enrollment_token_check(name=name, shop=shop, max_uses=max_uses)
    secret = ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = EnrollmentToken.objects.create(
            provider=provider,
            name=name,
            shop=shop,
            digest=secret_digest(secret),
            created_by=actor if isinstance(actor, User) else None,
            expires_at=expires_at,
            max_uses=max_uses,
        )
        audit_record(
            actor=actor,
            action="enrollment_token.create",
            obj=token,
            after=snapshot(token, ENROLLMENT_TOKEN_AUDIT_FIELDS),
            ip_address=ip_address,
        )
    return token, secret


def enrollment_token_revoke(*, token: EnrollmentToken, actor, ip_address: str | None = None) -> EnrollmentToken:
    """Revoke a token at once: no enrolment with it succeeds from now on. Audited; revoking twice changes nothing."""
    with transaction.atomic():
        # Race: an enrolment counting a use at this moment is ordered by the row lock; the
        # enrolment's conditional UPDATE refuses a revoked token.
        locked = EnrollmentToken.objects.select_for_update().get(pk=token.pk)
        if locked.revoked_at is not None:
            return locked
        before = snapshot(locked, ENROLLMENT_TOKEN_AUDIT_FIELDS)
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action="enrollment_token.revoke",
            obj=locked,
            before=before,
            after=snapshot(locked, ENROLLMENT_TOKEN_AUDIT_FIELDS),
            ip_address=ip_address,
        )
    return locked


@dataclass(frozen=True)
class Enrollment:
    """What an enrolled phone needs: its credential (shown once), keys, topic and current command.

    ``offline`` (the OpenPAYGO secret, starting code and count) is set only on the
    enrolment that hands the device's current secret out, which happens once: the first
    enrolment, or the first proven one after a staff re-key. Otherwise it is None.
    """

    device: Device
    credential: str
    server_keys: dict[str, str]
    offline: dict | None
    mqtt_topic: str
    envelope: dict
    # The phone's own MQTT account ({"username", "password"}), or None without phone accounts.
    mqtt: dict | None = None

    def as_dict(self) -> dict:
        return {
            "device": str(self.device.uid),
            "credential": self.credential,
            "server_keys": self.server_keys,
            "offline": self.offline,
            "mqtt_topic": self.mqtt_topic,
            "mqtt": self.mqtt,
            "envelope": self.envelope,
        }


def _enrolment_proof(
    *, device: Device, device_key: str, code: str | None, message: bytes, signature: bytes, issued_at, now
) -> tuple[str | None, str]:
    """``(proof, "")`` when this enrolment of ``device`` is proven, else ``(None, why)`` (for the trail only)."""
    if device.enrolled_at is None:
        proof, key = EnrolmentProof.FIRST, device_key
    elif code is not None:
        expected = device.reenrollment_code_digest
        fresh = device.reenrollment_code_expires_at is not None and device.reenrollment_code_expires_at > now
        if not expected or not fresh or not hmac.compare_digest(expected, _reenrollment_code_digest(device, code)):
            return None, "re-enrolment code wrong, used or expired"
        proof, key = EnrolmentProof.CODE, device_key
    elif device.device_key and hmac.compare_digest(device.device_key, device_key):
        proof, key = EnrolmentProof.DEVICE_KEY, device.device_key
    else:
        return None, "no proof: not the device key this phone registered, and no re-enrolment code"
    try:
        public_key_from_b64(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return None, "the signature does not verify with the device key"
    if device.last_challenge_at is not None and issued_at <= device.last_challenge_at:
        # Each challenge is accepted once per device, and never one older than the last accepted.
        return None, "challenge already used (a replayed or late signature)"
    return proof, ""


def device_enroll(
    *,
    imei: str,
    token_secret: str,
    device_key: str,
    challenge: str,
    signature: str,
    reenrollment_code: str = "",
    app_version: str = "",
    ip_address: str | None = None,
) -> Enrollment:
    """Enrol a phone, or enrol it again, presenting its IMEI, a provider's enrolment token and a proof.

    Every enrolment carries the phone's device public key and its Ed25519 signature over
    :func:`devices.protocol.enrollment_message` of a fresh challenge
    (:func:`enrollment_challenge_issue`). What the signature must prove depends on the
    device (docs/lock-pipeline.md, "Enrolment"):

    * a device that never enrolled: the token suffices; the key is registered;
    * a device already enrolled: the signature must be by the key it registered, or
      ``reenrollment_code`` must be the one-time code staff issued for this device (the
      presented key then replaces the registered one). The provider-wide token alone
      never re-enrols a device.

    Any refusal (bad, revoked, expired or used-up token; IMEI not a device of the token's
    provider; no valid proof; a challenge already used) raises the same
    ``EnrollmentRefused`` and changes nothing: the live credential keeps working. A
    refusal for an existing device is audited (``device.enrol_refused``, at most once a
    minute per device). A malformed key, signature or stale challenge is a field error,
    which depends on no device and reveals nothing.

    Each enrolment issues a new credential (the previous one stops working) and returns
    the device's **current** command, so a reset never removes a lock. The OpenPAYGO
    secret is handed out once (``Enrollment.offline``): at the first enrolment, or the
    first proven one after a staff re-key (:func:`device_offline_rekey`).
    """
    try:
        digits = normalise_imei(imei)
    except ValidationError as exc:
        # A malformed IMEI is a field error: it reveals nothing about which devices exist.
        raise ValidationError({"imei": exc.messages}) from None
    now = timezone.now()
    errors: dict[str, list[str]] = {}
    if _exact_b64(device_key, 32) is None:
        errors["device_key"] = ["The phone's Ed25519 public key: standard base64 (with padding) of its raw 32 bytes."]
    raw_signature = _exact_b64(signature, 64)
    if raw_signature is None:
        errors["signature"] = ["Standard base64 (with padding) of the 64-byte Ed25519 signature."]
    code = None
    if reenrollment_code:
        code = _normalise_reenrollment_code(reenrollment_code)
        if code is None:
            errors["reenrollment_code"] = [f"{REENROLLMENT_CODE_LENGTH} letters and digits, as the portal showed it."]
    issued_at = _challenge_issued_at(challenge, now)
    if issued_at is None:
        errors["challenge"] = [
            "Unknown or expired challenge: ask for a new one (POST enroll/challenge) and use it within "
            f"{settings.DEVICE_ENROLL_CHALLENGE_SECONDS} seconds."
        ]
    if errors:
        raise ValidationError(errors)
    message = enrollment_message(challenge=challenge, imei=digits, device_key=device_key)
    refused: tuple[Device, EnrollmentToken, str] | None = None
    with transaction.atomic():
        token = EnrollmentToken.objects.filter(digest=secret_digest(token_secret or "")).first()
        if token is None or token.revoked_at is not None or (token.expires_at and token.expires_at <= now):
            raise EnrollmentRefused()
        # Only the token's provider's devices are searched: without a valid token,
        # nothing can be learnt about which IMEIs exist.
        device = (
            Device.objects.select_for_update()
            .filter(provider_id=token.provider_id)
            .filter(Q(imei=digits) | Q(imei2=digits))
            .order_by("id")
            .first()
        )
        if device is None:
            raise EnrollmentRefused()
        # Race: the row lock orders concurrent enrolments of one device (the real phone and
        # someone replaying its signature): the second sees the first's challenge as used.
        proof, why = _enrolment_proof(
            device=device,
            device_key=device_key,
            code=code,
            message=message,
            signature=raw_signature,
            issued_at=issued_at,
            now=now,
        )
        if proof is None:
            refused = (device, token, why)
        else:
            enrollment = _enrol(
                device=device,
                token=token,
                proof=proof,
                device_key=device_key,
                issued_at=issued_at,
                app_version=app_version,
                ip_address=ip_address,
                now=now,
            )
    if refused is not None:
        _enrolment_refused_record(*refused, ip_address=ip_address, now=now)
        raise EnrollmentRefused()
    return enrollment


def _enrol(
    *, device: Device, token: EnrollmentToken, proof: str, device_key: str, issued_at, app_version, ip_address, now
) -> Enrollment:
    """Record a proven enrolment of the locked ``device`` (inside the caller's transaction)."""
    first = proof == EnrolmentProof.FIRST
    valid = EnrollmentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )
    if first:
        # Race: a token revoked, or its last use taken, while this enrolment runs is refused by
        # the condition; F() keeps concurrent enrolments from losing each other's count.
        counted = valid.filter(Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses"))).update(
            uses=F("uses") + 1, last_used_at=now
        )
    else:
        counted = valid.update(last_used_at=now)
    if not counted:
        raise EnrollmentRefused()
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    replaced_digest = device.credential_digest
    previous_key = device.device_key
    device.credential_digest = secret_digest(credential)
    device.enrolled_at = now
    device.app_version = (app_version or "")[: Device._meta.get_field("app_version").max_length]
    device.device_key = device_key
    device.last_challenge_at = issued_at
    device.reenrollment_code_digest, device.reenrollment_code_expires_at = "", None  # a code works once
    if not device.offline_secret:
        device.offline_secret = secrets.token_hex(16)
        device.offline_starting_code = OpenPAYGOTokenShared.generate_starting_code(bytes.fromhex(device.offline_secret))
    send_offline = device.offline_sent_at is None
    if send_offline:
        # Handed out once: whoever enrols later (a reset phone, or anyone holding the
        # token) never receives it, so no one can mint offline codes from an enrolment.
        device.offline_sent_at = now
    device.updated_at = now
    device.save(
        update_fields=[
            "credential_digest",
            "enrolled_at",
            "app_version",
            "device_key",
            "last_challenge_at",
            "reenrollment_code_digest",
            "reenrollment_code_expires_at",
            "offline_secret",
            "offline_starting_code",
            "offline_sent_at",
            "updated_at",
        ]
    )
    audit_record(
        actor=f"enrolment token {token.name}",
        action="device.enrol",
        obj=device,
        before=None if first else {"device_key": device_key_fingerprint(previous_key) or None},
        after={
            "app_version": device.app_version,
            "re_enrolment": not first,
            "proof": proof,
            "device_key": device_key_fingerprint(device_key),
            "offline_key_sent": send_offline,
            "token_id": token.pk,
            "token": token.name,
            "shop": token.shop,
        },
        ip_address=ip_address,
    )
    # The previous credential must stop working on the cached check-in path too.
    checkin_cache.invalidate_on_commit([device.pk])
    if replaced_digest:
        transaction.on_commit(lambda: checkin_cache.forget_credential(replaced_digest))
    offline = None
    if send_offline:
        offline = {
            "secret": device.offline_secret,
            "starting_code": device.offline_starting_code,
            "count": device.offline_count,
        }
    return Enrollment(
        device=device,
        credential=credential,
        server_keys=public_keys(),
        offline=offline,
        mqtt_topic=topic_for(str(device.uid)),
        envelope=device_current_envelope(device),
        # Its MQTT password follows the new credential; the broker is told after commit.
        mqtt=mqtt_accounts.account_for_enrolment(device=device),
    )


def _enrolment_refused_record(
    device: Device, token: EnrollmentToken, why: str, *, ip_address: str | None, now: dt.datetime
) -> None:
    """Audit a refused enrolment of an existing device (a takeover attempt, or a phone that lost its key)."""
    from portal.models import AuditEvent

    recent = AuditEvent.objects.filter(
        object_type=Device._meta.label,
        object_id=str(device.pk),
        action="device.enrol_refused",
        created_at__gte=now - REFUSED_AUDIT_EVERY,
    ).exists()
    if recent:
        return
    audit_record(
        actor=f"enrolment token {token.name}",
        action="device.enrol_refused",
        obj=device,
        after={"reason": why, "token_id": token.pk, "token": token.name, "shop": token.shop},
        ip_address=ip_address,
    )


def device_reenrollment_code_issue(
    *, device: Device, actor: User, ip_address: str | None = None
) -> tuple[str, dt.datetime]:
    """Issue a one-time re-enrolment code for a phone that lost its device key; returns ``(code, expires_at)``.

    For the provider's staff holding ``manage_devices`` (another provider's device is 404).
    The code is shown once, works once, for this device only and for
    ``DEVICE_REENROLL_CODE_MINUTES``; only its digest is stored and a new code replaces an
    unused one. The phone enrols with it and registers a new device key. It hands out no
    offline-code secret (that takes a four-eyes re-key). Audited, without the code.
    """
    _require_in_scope(actor, device)
    if not has_right(actor, Right.MANAGE_DEVICES):
        raise PermissionDenied("Your role does not allow this (manage_devices).")
    code = "".join(secrets.choice(REENROLLMENT_CODE_ALPHABET) for _ in range(REENROLLMENT_CODE_LENGTH))
    now = timezone.now()
    expires_at = now + dt.timedelta(minutes=settings.DEVICE_REENROLL_CODE_MINUTES)
    with transaction.atomic():
        locked = Device.objects.select_for_update().get(pk=device.pk)
        if locked.enrolled_at is None:
            raise ValidationError(
                "This phone has not enrolled yet: its first enrolment needs only the enrolment token."
            )
        replaced = bool(locked.reenrollment_code_digest) and (
            locked.reenrollment_code_expires_at is not None and locked.reenrollment_code_expires_at > now
        )
        Device.objects.filter(pk=locked.pk).update(
            reenrollment_code_digest=_reenrollment_code_digest(locked, code),
            reenrollment_code_expires_at=expires_at,
            updated_at=now,
        )
        audit_record(
            actor=actor,
            action="device.reenrollment_code",
            obj=locked,
            before={"unused_code_replaced": replaced},
            after={"expires_at": expires_at, "device_key": device_key_fingerprint(locked.device_key) or None},
            ip_address=ip_address,
        )
    return "-".join(code[i : i + 4] for i in range(0, REENROLLMENT_CODE_LENGTH, 4)), expires_at


def device_offline_rekey(
    *, device: Device, requested_by: User, approved_by: User, reason: str, ip_address: str | None = None
) -> Device:
    """Give a phone that lost its offline-code secret a new one (four eyes, audited).

    ``requested_by`` (``request_unlock``) and ``approved_by`` (``approve_unlock``) must be
    two people (:func:`portal.four_eyes.four_eyes_check`), both with the device's provider
    in scope. A new OpenPAYGO secret and starting code replace the old ones and the
    counter starts again at 0, so codes made under the old secret no longer work. The
    secret is never shown to anyone: it waits for the phone's next *proven* enrolment
    (signed with its device key, or with a re-enrolment code) and is handed out there once.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": ["Say why the phone needs a new offline-code key."]})
    _require_two_people(device, requested_by=requested_by, approved_by=approved_by, what="A new offline-code key")
    with transaction.atomic():
        locked = Device.objects.select_for_update().get(pk=device.pk)
        if locked.enrolled_at is None:
            raise ValidationError(
                "This phone has not enrolled yet: it gets its offline-code key at its first enrolment."
            )
        before = {"offline_count": locked.offline_count, "offline_sent_at": locked.offline_sent_at}
        secret = secrets.token_hex(16)
        locked.offline_secret = secret
        locked.offline_starting_code = OpenPAYGOTokenShared.generate_starting_code(bytes.fromhex(secret))
        locked.offline_count = 0
        locked.offline_sent_at = None
        locked.updated_at = timezone.now()
        locked.save(
            update_fields=["offline_secret", "offline_starting_code", "offline_count", "offline_sent_at", "updated_at"]
        )
        # Neither the secret nor the starting code enters the trail: with them anyone could mint codes.
        audit_record(
            actor=approved_by,
            action="device.offline_rekey",
            obj=locked,
            before=before,
            after={
                "offline_count": 0,
                "offline_sent_at": None,
                "reason": reason[:300],
                "requested_by": requested_by.get_username(),
                "approved_by": approved_by.get_username(),
            },
            ip_address=ip_address,
        )
    return locked


def device_by_credential(credential: str) -> Device | None:
    """The enrolled device holding ``credential``, or None (looked up by digest)."""
    if not credential.startswith(CREDENTIAL_PREFIX):
        return None
    found = Device.objects.filter(credential_digest=secret_digest(credential), enrolled_at__isnull=False)[:1]
    return next(iter(found), None)


# --- Check-in and acknowledgement -----------------------------------------------------


def _device_report(*, device_id: int, seq: int, state: str, via: str, now: dt.datetime) -> bool:
    """Move the reported state to what the phone applied at ``seq``, only forward; True if it moved."""
    # Race: a phone's acks and check-ins arrive out of order or at once. The row lock
    # orders them (and gives a true "before" for the audit); the conditional UPDATE
    # lets only a newer seq move the reported state, so a late older report never
    # overwrites a newer one.
    device = Device.objects.select_for_update().get(pk=device_id)
    if seq <= device.reported_seq or seq > device.command_seq:
        return False
    moved = Device.objects.filter(pk=device_id, reported_seq__lt=seq).update(
        reported_state=state, reported_seq=seq, reported_at=now
    )
    if not moved:
        return False
    DeviceCommand.objects.filter(device_id=device_id, seq=seq, acknowledged_at__isnull=True).update(acknowledged_at=now)
    if device.reported_state != state:
        # Only real changes are audited: a phone re-acknowledging the same state
        # every few minutes would flood the trail.
        audit_record(
            actor=f"device {device.uid}",
            action="device.ack",
            obj=device,
            before={"state": device.reported_state, "seq": device.reported_seq},
            after={"state": state, "seq": seq, "via": via},
        )
        _emit_lock_webhook(device=device, state=state, seq=seq, now=now)
    return True


#: Confirmed states in which the phone is usable again after a lock.
_UNLOCKED_STATES = {LockState.UNLOCKED, LockState.TEMP_UNLOCKED, LockState.RELEASED}


def _emit_lock_webhook(*, device: Device, state: str, seq: int, now: dt.datetime) -> None:
    """Tell the provider's systems that the phone *confirmed* a lock, or an unlock after a lock.

    Keyed on the reported (acknowledged) state, not the desired one: what a provider acts
    on is what the phone shows. ``device`` holds the state before this report. A change
    between usable states (reminder to unlocked, a first report after enrolment) is no
    unlock and sends nothing.
    """
    from portal.webhooks import webhook_event_emit

    if state == LockState.LOCKED:
        event = "device.locked"
    elif state in _UNLOCKED_STATES and device.reported_state == LockState.LOCKED:
        event = "device.unlocked"
    else:
        return
    webhook_event_emit(
        provider=device.provider_id,
        event=event,
        payload={
            "imei": device.imei,
            "device": str(device.uid),
            "state": state,
            "previous_state": device.reported_state or None,
            "seq": seq,
            "at": now,
        },
    )


def device_checkin(*, device: Device, state: str, last_seq: int, app_version: str = "") -> dict:
    """A phone checking in: note it, record what it applied, and answer its current signed envelope.

    ``last_seq`` above anything the server issued means the server lost commands it
    had sent (a database restored from a backup): the phone would ignore every new
    command with a lower seq, so the sequence jumps past it and the current state is
    issued again.
    """
    if state not in STATES:
        raise ValidationError({"state": [f"One of {', '.join(STATES)}."]})
    now = timezone.now()
    app_version = (app_version or "")[: Device._meta.get_field("app_version").max_length]
    if last_seq <= device.reported_seq and last_seq <= device.command_seq:
        # The usual check-in: the phone reports nothing newer than the server knows. Both
        # counters only ever grow, so a ``device`` read moments ago can only understate them
        # and skipping the locked path is safe. Two queries, no transaction: this is the
        # call every phone makes every few minutes.
        Device.objects.filter(pk=device.pk).update(last_checkin_at=now, app_version=app_version)
        return device_current_envelope(device)
    with transaction.atomic():
        Device.objects.filter(pk=device.pk).update(last_checkin_at=now, app_version=app_version)
        # Race: two check-ins both seeing the old command_seq would both jump; the
        # condition lets only the first move it.
        jumped = Device.objects.filter(pk=device.pk, command_seq__lt=last_seq).update(command_seq=last_seq)
        if jumped:
            log.warning(
                "Device %s reported seq %s beyond the last issued; issuing its state again", device.uid, last_seq
            )
            locked = Device.objects.select_for_update().get(pk=device.pk)
            _reissue_current_state(locked, latest=_latest_command(device.pk), actor=f"device {device.uid}")
        _device_report(device_id=device.pk, seq=last_seq, state=state, via="checkin", now=now)
        return device_current_envelope(device)


def device_checkins_flush() -> int:
    """Write the check-in times buffered by the cached check-in path to the devices (set-based).

    Runs every ``CHECKIN_FLUSH_SECONDS`` from beat; returns the number of devices updated.
    Without Redis there is no buffer and nothing to do.
    """
    return checkin_cache.checkins_flush()


def device_ack(*, device: Device, seq: int, state: str) -> bool:
    """A phone acknowledging command ``seq`` in ``state``; True if the reported state moved forward.

    An older or repeated acknowledgement is accepted and ignored; a seq that was never
    issued to this device is refused.
    """
    if state not in STATES:
        raise ValidationError({"state": [f"One of {', '.join(STATES)}."]})
    if not DeviceCommand.objects.filter(device_id=device.pk, seq=seq).exists():
        raise ValidationError({"seq": ["No command with this sequence number was issued to this device."]})
    with transaction.atomic():
        return _device_report(device_id=device.pk, seq=seq, state=state, via="ack", now=timezone.now())


# --- Offline codes (OpenPAYGO Token) --------------------------------------------------

MAX_OFFLINE_DAYS = OpenPAYGOTokenShared.MAX_ACTIVATION_VALUE  # 995: the largest value a standard token carries


def _require_in_scope(user, device: Device) -> None:
    visible = visible_provider_ids(user)
    if visible is not None and device.provider_id not in visible:
        raise Http404("No such device.")


def _require_two_people(device: Device, *, requested_by: User, approved_by: User, what: str) -> None:
    """Both in scope of ``device``, each with their right, and two people (four eyes) — or refuse."""
    _require_in_scope(requested_by, device)
    _require_in_scope(approved_by, device)
    if not has_right(requested_by, Right.REQUEST_UNLOCK):
        raise PermissionDenied("The requester's role does not allow requesting this.")
    if not has_right(approved_by, Right.APPROVE_UNLOCK):
        raise PermissionDenied("The approver's role does not allow approving this.")
    if requested_by.pk == approved_by.pk:
        raise PermissionDenied(f"{what} needs a second person to approve it.")
    four_eyes_check(requester=requested_by, approver=approved_by)


def offline_code_issue(
    *,
    device: Device,
    kind: str,
    days: int | None = None,
    requested_by: User,
    approved_by: User,
    reason: str,
) -> OfflineCode:
    """Issue an OpenPAYGO Token for a phone that cannot reach the server (four eyes, audited).

    ``requested_by`` (right ``request_unlock``) and ``approved_by`` (right
    ``approve_unlock``) must be two different people, both with the device's provider
    in scope (else 404), and ``reason`` is required. ``kind`` is ``unlock_days``
    (``days`` 1-995) or ``release``.

    The token is a standard 9-digit OpenPAYGO Token (``openpaygo.generate_token``)
    from the device's secret and starting code (sent at enrolment) and the next
    value of the device's counter (``offline_count``, kept under a row lock):

    * ``unlock_days``: ``SET_TIME`` with value = days — the phone is usable for that
      many days from entry (set, not added, so codes never stack up);
    * ``release``: ``DISABLE_PAYG`` (value 998) — the lock is removed for good.

    The phone decodes with ``openpaygo.decode_token(token=, secret_key=,
    count=<last count it accepted>, used_counts=<its list>, starting_code=)``, which
    returns ``(value, token_type, count, used_counts)``: it applies the value only
    for ``TokenType.SET_TIME`` (days) or ``TokenType.DISABLE_PAYG`` (release), then
    stores the returned count and used counts. A code already entered, or older
    than one entered since, decodes as ``ALREADY_USED`` and a wrong one as
    ``INVALID``; both are refused. When the phone is online again its signed
    commands take over.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": ["Say why the code is needed."]})
    if kind == OfflineCodeKind.UNLOCK_DAYS:
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_OFFLINE_DAYS:
            raise ValidationError({"days": [f"A whole number of days from 1 to {MAX_OFFLINE_DAYS}."]})
        token_type, value = TokenType.SET_TIME, days
    elif kind == OfflineCodeKind.RELEASE:
        if days is not None:
            raise ValidationError({"days": ["A release has no number of days."]})
        token_type, value = TokenType.DISABLE_PAYG, None
    else:
        raise ValidationError({"kind": [f"One of {', '.join(OfflineCodeKind.values)}."]})
    _require_two_people(device, requested_by=requested_by, approved_by=approved_by, what="An offline code")
    with transaction.atomic():
        # Race: two codes issued at once would read the same counter and produce
        # tokens for the same count, of which the phone accepts only one.
        locked = Device.objects.select_for_update().get(pk=device.pk)
        if not locked.offline_secret:
            raise ValidationError("This device has not enrolled yet, so it has no offline-code secret.")
        if locked.offline_sent_at is None:
            # A re-keyed phone gets its new secret at its next proven enrolment; until then a
            # code under the new secret would not work on it, and the old secret is gone.
            raise ValidationError(
                "This phone has not received its new offline-code key yet (it gets it when it next enrols "
                "with its device key or a re-enrolment code); a code made now would not work on it."
            )
        count, token = generate_token(
            secret_key=locked.offline_secret,
            count=locked.offline_count,
            value=value,
            token_type=token_type,
            starting_code=locked.offline_starting_code,
        )
        Device.objects.filter(pk=locked.pk).update(offline_count=count, updated_at=timezone.now())
        code = OfflineCode.objects.create(
            device=locked,
            kind=kind,
            days=days,
            token=token,
            count=count,
            reason=reason[: OfflineCode._meta.get_field("reason").max_length],
            requested_by=requested_by,
            approved_by=approved_by,
        )
        # The token itself stays out of the trail: whoever reads the trail could unlock the phone.
        audit_record(
            actor=approved_by,
            action="device.offline_code",
            obj=locked,
            after={
                "kind": kind,
                "days": days,
                "count": count,
                "reason": code.reason,
                "requested_by": requested_by.get_username(),
                # The requester's id: the auditor's same-browser list (portal.selectors.APPROVAL_ACTIONS).
                "requested_by_id": requested_by.pk,
                "approved_by": approved_by.get_username(),
            },
        )
    device.offline_count = count
    return code
