"""Enrolment: a phone proves itself with an enrolment token, a fresh challenge and its device key
(or a re-enrolment code)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.crypto import salted_hmac
from openpaygo.token_shared import OpenPAYGOTokenShared

from devices import checkin_cache, mqtt_accounts
from devices.keys import key_statements
from devices.models import (
    Device,
    EnrollmentToken,
    LockState,
    normalise_imei,
)
from devices.protocol import (
    CREDENTIAL_PREFIX,
    b64,
    enrollment_message,
    public_key_from_b64,
    secret_digest,
    topic_for,
)
from devices.services.access import require_in_scope
from devices.services.commands import device_current_envelope
from devices.services.credentials import (
    REENROLLMENT_CODE_ALPHABET,
    REENROLLMENT_CODE_LENGTH,
    device_key_fingerprint,
    exact_b64,
    normalise_reenrollment_code,
    reenrollment_code_digest_of,
)
from portal.audit import audit_record
from portal.models import AuditEvent, User
from portal.permissions import Right, has_right

ENROLMENT_REFUSED = (
    "Enrolment refused: check the IMEI and the enrolment token. A phone that enrolled before must sign "
    "with its device key, or use a re-enrolment code from its provider."
)


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
#: Namespace of the per-device-key advisory lock (an arbitrary constant no other lock in finlock uses).
_KEY_LOCK_NAMESPACE = 0x0E4C_0CE5


class EnrollmentRefused(ValidationError):
    """The one answer to every refused enrolment: it never says whether the IMEI, the token or the proof was wrong."""

    def __init__(self) -> None:
        super().__init__(ENROLMENT_REFUSED, code="enrolment_refused")


class EnrolmentProof:
    """How an enrolment was proven (recorded in the audit trail)."""

    FIRST = "first_enrolment"  # the device never enrolled: the token suffices (the key is registered)
    DEVICE_KEY = "device_key"  # signed with the key the device registered
    CODE = "reenrollment_code"  # a one-time code staff issued for this device (a new key is registered)


def _challenge_mac(body: bytes) -> bytes:
    return salted_hmac(_CHALLENGE_SALT, body, algorithm="sha256").digest()


def enrollment_challenge_issue(*, now: dt.datetime | None = None) -> dict[str, Any]:
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


def _challenge_issued_at(challenge: object, now: dt.datetime) -> dt.datetime | None:
    """The issue time of a challenge this server family made and that is still fresh, else None."""
    raw = exact_b64(challenge, _CHALLENGE_LENGTH)
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


@dataclass(frozen=True)
class Enrollment:
    """What an enrolled phone needs: its credential (shown once), keys, topic and current command.

    ``offline`` (the OpenPAYGO secret, starting code and count) is set only on the
    enrolment that hands the device's current secret out, which happens once: the first
    enrolment, or the first proven one after a staff re-key. Otherwise it is None.
    """

    device: Device
    credential: str
    key_statements: list[dict[str, Any]]
    offline: dict[str, Any] | None
    mqtt_topic: str
    envelope: dict[str, Any]
    # The phone's own MQTT account ({"username", "password"}), or None without phone accounts.
    mqtt: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": str(self.device.uid),
            "credential": self.credential,
            "key_statements": self.key_statements,
            "offline": self.offline,
            "mqtt_topic": self.mqtt_topic,
            "mqtt": self.mqtt,
            "envelope": self.envelope,
        }


def _enrolment_proof(
    *,
    device: Device,
    device_key: str,
    code: str | None,
    message: bytes,
    signature: bytes,
    issued_at: dt.datetime,
    now: dt.datetime,
) -> tuple[str | None, str]:
    """``(proof, "")`` when this enrolment of ``device`` is proven, else ``(None, why)`` (for the trail only)."""
    if device.enrolled_at is None:
        proof, key = EnrolmentProof.FIRST, device_key
    elif code is not None:
        expected = device.reenrollment_code_digest
        fresh = device.reenrollment_code_expires_at is not None and device.reenrollment_code_expires_at > now
        if not expected or not fresh or not hmac.compare_digest(expected, reenrollment_code_digest_of(device, code)):
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
    if key != device.device_key and _key_registered_elsewhere(device=device, device_key=key):
        # A device key belongs to one device: a phone (a locked one, say) that enrolled as
        # another device would drop its own command with the other device's id.
        return None, "the device key is not accepted for this device"
    return proof, ""


def _key_registered_elsewhere(*, device: Device, device_key: str) -> bool:
    """Whether a device other than ``device`` has registered ``device_key`` (inside the caller's transaction)."""
    if connection.vendor == "postgresql":
        # Race: two enrolments registering one key for two devices (each holding its own
        # device row) would each see the key free; the lock on the key, held until commit,
        # makes the second see the first's registration.
        lock_id = int.from_bytes(hashlib.sha256(device_key.encode()).digest()[:4], "big", signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_KEY_LOCK_NAMESPACE, lock_id])
    # SQLite (development): one writer at a time, each transaction taking the write lock first.
    holders = Device.objects.filter(device_key=device_key).exclude(pk=device.pk)
    if holders.exclude(desired_state=LockState.RELEASED).exists():
        return True
    # A phone released for good (paid off) may be financed again as another device, here or at
    # another provider: its key moves, and the released record no longer holds it.
    holders.update(device_key="")
    return False


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
    provider; no valid proof; a challenge already used; a ``device_key`` another device
    registered, since a key belongs to one device) raises the same
    ``EnrollmentRefused`` and changes nothing: the live credential keeps working. A
    refusal for an existing device is audited (``device.enrol_refused``, at most once a
    minute per device). A malformed key, signature or stale challenge is a field error,
    which depends on no device and reveals nothing.

    Each enrolment issues a new credential (the previous one stops working) and returns
    the device's **current** command, so a reset never removes a lock. The OpenPAYGO
    secret is handed out once (``Enrollment.offline``): at the first enrolment, or the
    first proven one after a staff re-key (:func:`device_offline_rekey`).
    """
    digits, raw_signature, code, issued_at = _checked_fields(
        imei=imei,
        device_key=device_key,
        challenge=challenge,
        signature=signature,
        reenrollment_code=reenrollment_code,
        now=(now := timezone.now()),
    )
    message = enrollment_message(challenge=challenge, imei=digits, device_key=device_key)
    refused: tuple[Device, EnrollmentToken, str] | None = None
    with transaction.atomic():
        token, device = _token_and_device(token_secret=token_secret, digits=digits, now=now)
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


def _checked_fields(
    *, imei: str, device_key: str, challenge: str, signature: str, reenrollment_code: str, now: dt.datetime
) -> tuple[str, bytes, str | None, dt.datetime]:
    """``(IMEI digits, signature bytes, re-enrolment code or None, challenge issue time)``, or field errors.

    Each depends on no device, so a field error reveals nothing about which devices exist.
    """
    try:
        digits = normalise_imei(imei)
    except ValidationError as exc:
        raise ValidationError({"imei": exc.messages}) from None
    errors: dict[str, list[str]] = {}
    if exact_b64(device_key, 32) is None:
        errors["device_key"] = ["The phone's Ed25519 public key: standard base64 (with padding) of its raw 32 bytes."]
    raw_signature = exact_b64(signature, 64)
    if raw_signature is None:
        errors["signature"] = ["Standard base64 (with padding) of the 64-byte Ed25519 signature."]
    code = None
    if reenrollment_code:
        code = normalise_reenrollment_code(reenrollment_code)
        if code is None:
            errors["reenrollment_code"] = [f"{REENROLLMENT_CODE_LENGTH} letters and digits, as the portal showed it."]
    issued_at = _challenge_issued_at(challenge, now)
    if issued_at is None:
        errors["challenge"] = [
            "Unknown or expired challenge: ask for a new one (POST enroll/challenge) and use it within "
            f"{settings.DEVICE_ENROLL_CHALLENGE_SECONDS} seconds."
        ]
    if errors or raw_signature is None or issued_at is None:
        raise ValidationError(errors)
    return digits, raw_signature, code, issued_at


def _token_and_device(*, token_secret: str, digits: str, now: dt.datetime) -> tuple[EnrollmentToken, Device]:
    """The live token and its provider's device with this IMEI, locked; ``EnrollmentRefused`` for anything else."""
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
    return token, device


def _count_token_use(token: EnrollmentToken, *, first: bool, now: dt.datetime) -> None:
    """Count a first enrolment against the token's uses (or just note its use); ``EnrollmentRefused`` if it may not."""
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


_ENROL_FIELDS = [
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


def _enrol(
    *,
    device: Device,
    token: EnrollmentToken,
    proof: str,
    device_key: str,
    issued_at: dt.datetime,
    app_version: str,
    ip_address: str | None,
    now: dt.datetime,
) -> Enrollment:
    """Record a proven enrolment of the locked ``device`` (inside the caller's transaction)."""
    first = proof == EnrolmentProof.FIRST
    _count_token_use(token, first=first, now=now)
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    replaced_digest = device.credential_digest
    previous_key = device.device_key
    device.credential_digest = secret_digest(credential)
    device.enrolled_at = now
    device.app_version = (app_version or "")[: Device._meta.get_field("app_version").max_length]
    device.device_key = device_key
    device.last_challenge_at = issued_at
    device.reenrollment_code_digest, device.reenrollment_code_expires_at = "", None  # a code works once
    send_offline = _prepare_offline_secret(device, now)
    device.updated_at = now
    device.save(update_fields=_ENROL_FIELDS)
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
        key_statements=key_statements(),
        offline=offline,
        mqtt_topic=topic_for(str(device.uid)),
        envelope=device_current_envelope(device),
        # Its MQTT password follows the new credential; the broker is told after commit.
        mqtt=mqtt_accounts.account_for_enrolment(device=device),
    )


def _prepare_offline_secret(device: Device, now: dt.datetime) -> bool:
    """Give ``device`` an OpenPAYGO secret if it has none; True when this enrolment hands it out."""
    if not device.offline_secret:
        device.offline_secret = secrets.token_hex(16)
        device.offline_starting_code = OpenPAYGOTokenShared.generate_starting_code(bytes.fromhex(device.offline_secret))
    send_offline = device.offline_sent_at is None
    if send_offline:
        # Handed out once: whoever enrols later (a reset phone, or anyone holding the
        # token) never receives it, so no one can mint offline codes from an enrolment.
        device.offline_sent_at = now
    return send_offline


def _enrolment_refused_record(
    device: Device, token: EnrollmentToken, why: str, *, ip_address: str | None, now: dt.datetime
) -> None:
    """Audit a refused enrolment of an existing device (a takeover attempt, or a phone that lost its key)."""
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
    require_in_scope(actor, device)
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
            reenrollment_code_digest=reenrollment_code_digest_of(locked, code),
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
