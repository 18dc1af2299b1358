"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.contracts.selectors import (
    ZERO as ZERO,
    _money as _money,
    provider_today as provider_today,
    ContractPosition as ContractPosition,
    contract_position as contract_position,
    contracts_with_totals as contracts_with_totals,
    schedule_rows as schedule_rows,
    provider_overview as provider_overview,
    contract_for_number as contract_for_number,
    contract_payments as contract_payments,
)
from payments.locks.selectors import (
    paid_still_locked as paid_still_locked,
)
from payments.ledger.selectors import (
    SUGGESTION_LIMIT as SUGGESTION_LIMIT,
    _AMOUNT_WINDOW as _AMOUNT_WINDOW,
    _REASON_SCORES as _REASON_SCORES,
    _REASON_LABELS as _REASON_LABELS,
    Suggestion as Suggestion,
    FLAGGED as FLAGGED,
    _flagged as _flagged,
    payments_for as payments_for,
    payment_status_counts as payment_status_counts,
    unmatched_payments_panel as unmatched_payments_panel,
    payments_suggestions as payments_suggestions,
    payment_suggestions as payment_suggestions,
    payment_story as payment_story,
    payments_with_transaction_id as payments_with_transaction_id,
)
