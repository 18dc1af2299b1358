"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.ledger.matching import (
    contracts_match_many as contracts_match_many,
)
from payments.statements.reconcile import (
    CHANNEL as CHANNEL,
    NOT_CREDITED_DEBIT as NOT_CREDITED_DEBIT,
    BatchCounts as BatchCounts,
    entry_external_id as entry_external_id,
    entry_received_at as entry_received_at,
    not_credited_note as not_credited_note,
    statement_line_fields as statement_line_fields,
    _set_columns as _set_columns,
    _reserve_ids as _reserve_ids,
    _copy as _copy,
    statement_lines_credit as statement_lines_credit,
)
from payments.statements.receipts import (
    _Credit as _Credit,
    _receipt_contracts as _receipt_contracts,
    _lock_receipts as _lock_receipts,
    _independent_of_uploader as _independent_of_uploader,
    receipt_not_confirmed_note as receipt_not_confirmed_note,
    _flag_conflicts as _flag_conflicts,
)
