"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.statements.imports import (
    log as log,
    MAX_STATEMENT_BYTES as MAX_STATEMENT_BYTES,
    CREDIT_BATCH as CREDIT_BATCH,
    MAX_ATTEMPTS as MAX_ATTEMPTS,
    REQUEUE_PENDING_AFTER as REQUEUE_PENDING_AFTER,
    STALE_MARGIN as STALE_MARGIN,
    BACKSTOP_SECONDS as BACKSTOP_SECONDS,
    statement_import_create as statement_import_create,
    _mapping_for as _mapping_for,
    _import_line as _import_line,
    _OutOfTime as _OutOfTime,
    _stale_before as _stale_before,
    _lost as _lost,
    _claimable as _claimable,
    statement_import_run as statement_import_run,
    _fail as _fail,
    _run as _run,
    statement_imports_enqueue as statement_imports_enqueue,
    statement_imports_requeue as statement_imports_requeue,
    _fail_exhausted as _fail_exhausted,
)
