"""Writes of the people's side, one module per responsibility.

* ``cases``: hotline cases (open, note, assign, verify the caller, resolve);
* ``unlocks``: unlock requests, asked by one person and approved (four eyes) or rejected by another;
* ``reviews``: proof-of-purchase reviews submitted by service centers and decided by the provider;
* ``common``: the tenant scope, required text, the device's latest contract.

Support never writes the money side's rows: an approved release or temporary unlock goes through the
lock API (``payments.locks.services``). Every write is atomic and audited. Rights and tenant scope
are checked here as well as in the views (a service may be called from elsewhere): another tenant's object is
``Http404``, a missing right ``PermissionDenied``, bad input ``ValidationError``.

Import from the submodule (``from support.services.cases import case_open``). The names below
are re-exported only for code not yet moved to the submodules; this shim goes away.
"""

from support.services.cases import (
    assignable_staff,
    case_assign,
    case_note,
    case_open,
    case_resolve,
    case_verify_identity,
)
from support.services.common import device_latest_contract
from support.services.reviews import MAX_PROOF_FILES, proof_review_decide, proof_review_submit
from support.services.unlocks import (
    LIVE_CONTRACT_STATUSES,
    ApprovalResult,
    UnlockAlreadyDecided,
    max_temp_unlock_hours,
    unlock_request_approve,
    unlock_request_create,
    unlock_request_reject,
)

__all__ = [
    "LIVE_CONTRACT_STATUSES",
    "MAX_PROOF_FILES",
    "ApprovalResult",
    "UnlockAlreadyDecided",
    "assignable_staff",
    "case_assign",
    "case_note",
    "case_open",
    "case_resolve",
    "case_verify_identity",
    "device_latest_contract",
    "max_temp_unlock_hours",
    "proof_review_decide",
    "proof_review_submit",
    "unlock_request_approve",
    "unlock_request_create",
    "unlock_request_reject",
]
