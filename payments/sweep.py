"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.locks.sweep import (
    LIVE_STATUSES as LIVE_STATUSES,
    FINAL_STATUSES as FINAL_STATUSES,
    SweepReport as SweepReport,
    policy_rules as policy_rules,
    _active_overrides as _active_overrides,
    annotate_desired_state as annotate_desired_state,
    changed_contract_ids as changed_contract_ids,
    decide_contract as decide_contract,
    apply_decisions as apply_decisions,
    run_sweep as run_sweep,
)
