"""The lock sweep: every active contract against its policy and the clock, in set-based SQL.

One query per provider finds the contracts whose desired state changes (the state
expression below mirrors ``payments.locks.decision.decide``, and a test proves they agree on
thousands of generated cases). Only those contracts are then locked, re-decided with the
pure function on fresh rows and written, with their signed device commands, in one
transaction per batch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict
from zoneinfo import ZoneInfo

from django.db import transaction
from django.db.models import (
    Case,
    CharField,
    Exists,
    F,
    Min,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.utils import timezone

from devices.models import LockState
from devices.services.commands import StateChange, device_states_apply
from payments.locks.refusals import commands_refused_record
from payments.locks.screen import ProviderScreenData, screen_build
from payments.locks.selectors import contract_lease_terms, decide_contract, policy_rules
from payments.models import Contract, ContractStatus, Installment, LockOverride, OverrideKind, Rules
from portal.models import Organisation, OrganisationKind
from portal.types import Actor

if TYPE_CHECKING:  # a type only: django-stubs' helper package is a development tool
    from django_stubs_ext import WithAnnotations

LIVE_STATUSES = (ContractStatus.ACTIVE, ContractStatus.DEFAULTED)
FINAL_STATUSES = (ContractStatus.PAID_OFF, ContractStatus.CANCELLED)


@dataclass
class SweepReport:
    """What one sweep did: contracts evaluated per provider, and changes by new state."""

    evaluated: int = 0
    changed: dict[str, int] = field(default_factory=dict)

    @property
    def total_changed(self) -> int:
        return sum(self.changed.values())


def _active_overrides(now: dt.datetime) -> QuerySet[LockOverride]:
    live = Q(lifted_at__isnull=True, starts_at__lte=now) & (Q(ends_at__isnull=True) | Q(ends_at__gt=now))
    return LockOverride.objects.filter(live)


class _Desired(TypedDict):
    desired: str


def annotate_desired_state(
    qs: QuerySet[Contract], *, rules: Rules, now: dt.datetime, zone: ZoneInfo
) -> QuerySet[WithAnnotations[Contract, _Desired]]:
    """Annotate ``desired`` on live contracts of one provider: ``decide`` written as one SQL expression."""
    local = now.astimezone(zone)
    today = local.date()
    unpaid = Q(installments__amount_paid__lt=F("installments__amount_due"))
    overrides = _active_overrides(now).filter(contract=OuterRef("pk"))
    qs = qs.annotate(
        oldest_overdue=Min("installments__due_date", filter=unpaid & Q(installments__due_date__lt=today)),
        due_soon=Min(
            "installments__due_date",
            filter=unpaid
            & Q(
                installments__due_date__gte=today,
                installments__due_date__lte=today + dt.timedelta(days=rules.reminder_days_before),
            ),
        ),
        on_hold=Exists(overrides.filter(kind=OverrideKind.DISPUTE_HOLD)),
        temp_until=Subquery(overrides.filter(kind=OverrideKind.TEMP_UNLOCK).order_by("-ends_at").values("ends_at")[:1]),
    )
    past_grace = Q(oldest_overdue__lt=today - dt.timedelta(days=rules.grace_days))
    # The window is a constant for the whole provider at this instant.
    lock_or_wait = LockState.LOCKED if rules.lock_may_start(local) else LockState.REMINDER
    return qs.annotate(
        desired=Case(
            When(Q(lock_state=LockState.RELEASED), then=Value(LockState.RELEASED)),
            When(past_grace & Q(on_hold=True), then=Value(LockState.REMINDER)),
            When(past_grace & Q(temp_until__isnull=False), then=Value(LockState.TEMP_UNLOCKED)),
            When(past_grace & Q(lock_state=LockState.LOCKED), then=Value(LockState.LOCKED)),
            When(past_grace, then=Value(lock_or_wait)),
            When(oldest_overdue__isnull=False, then=Value(LockState.REMINDER)),
            When(due_soon__isnull=False, then=Value(LockState.REMINDER)),
            default=Value(LockState.UNLOCKED),
            output_field=CharField(),
        )
    )


def changed_contract_ids(provider: Organisation, *, now: dt.datetime) -> tuple[int, list[int]]:
    """(contracts evaluated, ids whose desired state differs from their recorded one) for one provider."""
    rules = policy_rules(provider)
    live = Contract.objects.filter(provider=provider, status__in=LIVE_STATUSES).exclude(lock_state=LockState.RELEASED)
    evaluated = live.count()
    changed = list(
        annotate_desired_state(live, rules=rules, now=now, zone=provider.zone)
        .exclude(desired=F("lock_state"))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    settled = list(
        Contract.objects.filter(provider=provider, status__in=FINAL_STATUSES)
        .exclude(lock_state=LockState.RELEASED)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    return evaluated, sorted(changed + settled)


def apply_decisions(
    contract_ids: Iterable[int], *, now: dt.datetime, actor: Actor = None, reissue: bool = False
) -> dict[str, int]:
    """Lock the contracts, decide again on fresh rows, and write every change with its signed command.

    Returns ``{new_state: count}``. Runs in one transaction. With ``reissue`` a contract whose state
    stays gets its command again all the same (a dispute hold changes the lease, not the state).
    A contract whose device's command cannot be issued (``CommandTooLarge``, ...) keeps its state and
    the refusal is recorded (``payments.locks.refusals``); the others are written all the same.
    Private to the lock package: everyone else calls ``payments.locks.services`` (import-linter
    protects this module).
    """

    with transaction.atomic():
        # Lock order: contracts by id, then (inside device_states_apply) devices by id. A payment
        # verification takes the same order, so the sweep and an unlock never deadlock, and a
        # payment committed after the SQL pass is seen here (the rows are re-read under the lock).
        contracts = list(
            Contract.objects.select_for_update(of=("self",))
            .filter(pk__in=list(contract_ids))
            .select_related("provider", "customer", "device")
            .prefetch_related(
                Prefetch("installments", queryset=Installment.objects.order_by("number")),
                "overrides",
            )
            .order_by("pk")
        )
        decided = _decided(contracts, now=now, reissue=reissue)
        refused: dict[int, str] = {}
        if decided:
            # Every command is built before any is written: a device whose command cannot be issued
            # is left out, and one bad phone never rolls back the batch nor stops the sweep.
            device_states_apply(changes=[change for _c, _s, change in decided], actor=actor, refused=refused)
        kept = [(contract, state) for contract, state, _change in decided if contract.device_id not in refused]
        Contract.objects.bulk_update(
            [contract for contract, _state in kept],
            ["lock_state", "lock_reason", "lock_changed_at", "arrears_cleared_at", "updated_at"],
        )
        commands_refused_record(refused=refused, actor=actor)
    changed: dict[str, int] = {}
    for _contract, state in kept:
        if state is not None:
            changed[state] = changed.get(state, 0) + 1
    return changed


def _decided(
    contracts: list[Contract], *, now: dt.datetime, reissue: bool
) -> list[tuple[Contract, str | None, StateChange]]:
    """(contract moved in memory, its new state or None when only re-issued, its device's change) to write."""
    screens: dict[int, ProviderScreenData] = {}
    rules_by_provider: dict[int, Rules] = {}
    decided: list[tuple[Contract, str | None, StateChange]] = []
    for contract in contracts:
        provider = contract.provider
        if provider.pk not in rules_by_provider:
            rules_by_provider[provider.pk] = policy_rules(provider)
        rules = rules_by_provider[provider.pk]
        decision = decide_contract(contract, rules=rules, now=now)
        new_state: str | None = None
        if decision.state == contract.lock_state:
            if not reissue or decision.state == LockState.RELEASED:
                continue  # a payment or another sweep got there first
            contract.lock_reason, contract.updated_at = decision.reason[:300], now
        else:
            _record_change(contract, decision.state, reason=decision.reason, now=now)
            new_state = decision.state
        if provider.pk not in screens:  # only for a change: most payments change nothing
            screens[provider.pk] = ProviderScreenData.load(provider)
        change = StateChange(
            device_id=contract.device_id,
            state=decision.state,
            reason=decision.reason,
            screen=screen_build(data=screens[provider.pk], contract=contract, decision=decision),
            allowed_numbers=screens[provider.pk].allowed_numbers(),
            expires_at=decision.expires_at,
            **contract_lease_terms(contract, rules=rules, now=now),
        )
        decided.append((contract, new_state, change))
    return decided


def _record_change(contract: Contract, state: str, *, reason: str, now: dt.datetime) -> None:
    """Move a loaded contract to its new lock state in memory (``apply_decisions`` writes them all at once)."""
    if contract.lock_state == LockState.LOCKED and state in (
        LockState.UNLOCKED,
        LockState.REMINDER,
        LockState.RELEASED,
    ):
        contract.arrears_cleared_at = now
    contract.lock_state = state
    contract.lock_reason = reason[:300]
    contract.lock_changed_at = contract.updated_at = now


def run_sweep(*, now: dt.datetime | None = None, batch_size: int = 1000, actor: Actor = None) -> SweepReport:
    """Evaluate every live contract of every provider; write only the changes, in batches."""
    now = now or timezone.now()
    report = SweepReport()
    for provider in Organisation.objects.filter(kind=OrganisationKind.PROVIDER).order_by("pk"):
        evaluated, ids = changed_contract_ids(provider, now=now)
        report.evaluated += evaluated
        for start in range(0, len(ids), batch_size):
            for state, n in apply_decisions(ids[start : start + batch_size], now=now, actor=actor).items():
                report.changed[state] = report.changed.get(state, 0) + n
    return report
