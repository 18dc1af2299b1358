"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.contracts.services import (
    MAX_INSTALLMENTS as MAX_INSTALLMENTS,
    EARLIEST_DUE as EARLIEST_DUE,
    LATEST_DUE as LATEST_DUE,
    parse_phone as parse_phone,
    customer_create as customer_create,
    contract_create as contract_create,
    build_schedule as build_schedule,
    contract_set_status as contract_set_status,
)
from payments.locks.services import (
    LOCK_POLICY_FIELDS as LOCK_POLICY_FIELDS,
    lock_policy_update as lock_policy_update,
    contract_lock_evaluate as contract_lock_evaluate,
    lock_sweep as lock_sweep,
    LOCK_SCREEN_TEXT_FIELDS as LOCK_SCREEN_TEXT_FIELDS,
    lock_screen_text_save as lock_screen_text_save,
)
from payments.ledger.errors import (
    PaymentConflict as PaymentConflict,
    PaymentAlreadyVerified as PaymentAlreadyVerified,
    PaymentAlreadyRecorded as PaymentAlreadyRecorded,
    WrongContract as WrongContract,
)
from payments.ledger.services import (
    _payment_request_fields as _payment_request_fields,
    _channels as _channels,
    _CHANNELS as _CHANNELS,
    _check_payment_input as _check_payment_input,
    payment_ingest as payment_ingest,
    _channel_record_arrived as _channel_record_arrived,
    channel_record_refusal as channel_record_refusal,
    _said_by as _said_by,
    payment_flag as payment_flag,
    conflict_reason as conflict_reason,
    payment_conflict_flag as payment_conflict_flag,
    payments_flag_unconfirmed as payments_flag_unconfirmed,
)
from payments.ledger.confirm import (
    _allocate as _allocate,
    _allocations_after as _allocations_after,
    provisional_limit as provisional_limit,
    _paid_in_full as _paid_in_full,
    _payment_matched_webhook as _payment_matched_webhook,
    _payment_apply as _payment_apply,
    _payment_confirm as _payment_confirm,
    _check_confirmable as _check_confirmable,
    payment_confirm as payment_confirm,
)
from payments.ledger.verify import (
    payment_match_manual as payment_match_manual,
    payment_verify as payment_verify,
    payment_reverse as payment_reverse,
    proof_save as proof_save,
    payment_verify_existing as payment_verify_existing,
    payment_record_from_proof as payment_record_from_proof,
)
from payments.ledger.channels import (
    PAYMENT_CHANNEL_FIELDS as PAYMENT_CHANNEL_FIELDS,
    payment_channel_save as payment_channel_save,
    payment_channel_set_active as payment_channel_set_active,
    payment_channel_move as payment_channel_move,
)
from payments.ledger.matching import (
    payment_find_match as payment_find_match,
)
from payments.statements.mappings import (
    CSV_MAPPING_MAX_PREAMBLE_ROWS as CSV_MAPPING_MAX_PREAMBLE_ROWS,
    CSV_MAPPING_MAX_WRAP_WIDTH as CSV_MAPPING_MAX_WRAP_WIDTH,
    _CSV_PROBE_DATE as _CSV_PROBE_DATE,
    csv_mapping_problems as csv_mapping_problems,
    _csv_mapping_in_use as _csv_mapping_in_use,
    csv_mapping_save as csv_mapping_save,
    csv_mapping_delete as csv_mapping_delete,
)
