"""Writes of the device registry, one module per responsibility.

* ``registry``: devices one at a time and from a CSV (bulk upload);
* ``commands``: desired state in, signed commands out (the outbox rows);
* ``credentials``, ``tokens``, ``enrolment``: a phone's secrets, the providers' enrolment
  tokens and enrolment itself;
* ``checkin``: what a phone reports and the answer it gets;
* ``offline``: offline codes and offline-code re-keys (four eyes); ``access``: who may act.

Import from the submodule (``from devices.services.enrolment import device_enroll``). The names
below are re-exported only for code not yet moved to the submodules; this shim goes away.
"""

from devices.services.checkin import device_ack, device_checkin, device_checkins_flush
from devices.services.commands import StateChange, device_current_envelope, device_states_apply
from devices.services.credentials import device_by_credential, device_key_fingerprint
from devices.services.enrolment import (
    EnrollmentRefused,
    device_enroll,
    device_reenrollment_code_issue,
    enrollment_challenge_issue,
)
from devices.services.offline import MAX_OFFLINE_DAYS, device_offline_rekey, offline_code_issue
from devices.services.registry import (
    BulkUploadError,
    bulk_upload_check_size,
    device_bulk_upload,
    device_create,
    device_update,
)
from devices.services.tokens import enrollment_token_create, enrollment_token_revoke

__all__ = [
    "MAX_OFFLINE_DAYS",
    "BulkUploadError",
    "EnrollmentRefused",
    "StateChange",
    "bulk_upload_check_size",
    "device_ack",
    "device_bulk_upload",
    "device_by_credential",
    "device_checkin",
    "device_checkins_flush",
    "device_create",
    "device_current_envelope",
    "device_enroll",
    "device_key_fingerprint",
    "device_offline_rekey",
    "device_reenrollment_code_issue",
    "device_states_apply",
    "device_update",
    "enrollment_challenge_issue",
    "enrollment_token_create",
    "enrollment_token_revoke",
    "offline_code_issue",
]
