"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.locks.decision import (
    FINAL_CONTRACT_STATUSES as FINAL_CONTRACT_STATUSES,
    Line as Line,
    Overrides as Overrides,
    Decision as Decision,
    _d as _d,
    decide as decide,
)
from payments.models import (
    Rules as Rules,
)
