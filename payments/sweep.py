"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.locks.selectors import decide_contract as decide_contract
from payments.locks.selectors import policy_rules as policy_rules
from payments.locks.sweep import (
    FINAL_STATUSES as FINAL_STATUSES,
)
from payments.locks.sweep import (
    LIVE_STATUSES as LIVE_STATUSES,
)
from payments.locks.sweep import (
    SweepReport as SweepReport,
)
from payments.locks.sweep import (
    _active_overrides as _active_overrides,
)
from payments.locks.sweep import (
    annotate_desired_state as annotate_desired_state,
)
from payments.locks.sweep import (
    apply_decisions as apply_decisions,
)
from payments.locks.sweep import (
    changed_contract_ids as changed_contract_ids,
)
from payments.locks.sweep import (
    run_sweep as run_sweep,
)
