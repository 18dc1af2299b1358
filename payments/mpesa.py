"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.ledger.mpesa import (
    log as log,
    DARAJA_TIME_ZONE as DARAJA_TIME_ZONE,
    MPESA_CURRENCY as MPESA_CURRENCY,
    MSISDN_REGION as MSISDN_REGION,
    _TRANS_TIME as _TRANS_TIME,
    ValidationResult as ValidationResult,
    DARAJA_FIELDS as DARAJA_FIELDS,
    C2BTransaction as C2BTransaction,
    parse_trans_time as parse_trans_time,
    parse_amount as parse_amount,
    is_masked as is_masked,
    payer_phone as payer_phone,
    payer_name as payer_name,
    short_code_unknown as short_code_unknown,
    validation_decision as validation_decision,
    mpesa_confirmation_ingest as mpesa_confirmation_ingest,
    _daraja_named as _daraja_named,
)
