"""The contracts a statement batch pays into (``payments.statements.reconcile``, step 5 and 7).

Locked in the order one payment takes them (the contracts by id, then their open
installments: the sweep's order, so never a deadlock), paid oldest installment first, the
allocations written at once, contracts paid in full marked paid off, and the lock decision
taken for every contract money may have moved towards unlocked.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import F

from devices.models import LockState
from payments.ledger.confirm import allocation_plan
from payments.locks.services import contracts_lock_evaluate
from payments.models import Contract, ContractStatus, Installment, PaymentAllocation, PaymentStatus
from payments.statements.bulk import bulk_set_columns, copy_rows, reserve_ids
from portal.audit import AuditEntry, audit_record_many
from portal.types import Actor

#: One allocation: (payment id, contract id, installment id or None for credit beyond the schedule, amount).
Allocation = tuple[int, int, int | None, Decimal]


@dataclass
class LockedContracts:
    """The rows a batch locks (contracts, then their open installments) and the allocations made on them."""

    contract_ids: list[int]
    contracts: dict[int, Contract]
    open_by_contract: dict[int, list[Installment]]
    allocations: list[Allocation] = field(default_factory=list)
    touched: dict[int, Installment] = field(default_factory=dict)

    def allocate(self, payment_id: int, contract_id: int, amount: Decimal) -> None:
        """Allocate ``amount`` to the contract's open installments, oldest first (``allocation_plan``'s rule)."""
        for installment, take in allocation_plan(self.open_by_contract[contract_id], amount):
            if installment is None:  # beyond the whole schedule: held as credit, never lost
                self.allocations.append((payment_id, contract_id, None, take))
                continue
            installment.amount_paid += take
            self.touched[installment.pk] = installment
            self.allocations.append((payment_id, contract_id, installment.pk, take))


def contracts_lock_for_allocation(contract_ids: list[int]) -> LockedContracts:
    """Lock the contracts (``contract_ids`` sorted), then their open installments, in the sweep's order."""
    contracts = {c.pk: c for c in Contract.objects.select_for_update().filter(pk__in=contract_ids).order_by("pk")}
    open_by_contract: dict[int, list[Installment]] = defaultdict(list)
    for installment in (
        Installment.objects.select_for_update()
        .filter(contract_id__in=contract_ids, amount_paid__lt=F("amount_due"))
        .order_by("contract_id", "due_date", "number")
    ):
        open_by_contract[installment.contract_id].append(installment)
    return LockedContracts(contract_ids=contract_ids, contracts=contracts, open_by_contract=open_by_contract)


def allocations_write(locked: LockedContracts) -> None:
    """Write the allocations (COPY; their payments are written) and the installments' paid amounts."""
    copy_rows(
        PaymentAllocation,
        [
            {
                "id": pk,
                "payment_id": payment_id,
                "contract_id": contract_id,
                "installment_id": inst,
                "amount": amount,
            }
            for pk, (payment_id, contract_id, inst, amount) in zip(
                reserve_ids(PaymentAllocation, len(locked.allocations)), locked.allocations, strict=True
            )
        ],
    )
    bulk_set_columns(Installment, list(locked.touched.values()), {"amount_paid": "numeric"})


def contracts_settle_paid_off(locked: LockedContracts, *, actor: Actor) -> list[Contract]:
    """Mark the active contracts now paid in full paid off, audited; returns them."""
    paid_off = [
        locked.contracts[pk]
        for pk in locked.contract_ids
        if locked.contracts[pk].status == ContractStatus.ACTIVE
        and all(i.amount_paid >= i.amount_due for i in locked.open_by_contract[pk])
    ]
    if paid_off:
        # Money from a receipt nobody confirmed never settles a contract (paid off is released for good).
        pending = set(
            PaymentAllocation.objects.filter(
                contract_id__in=[c.pk for c in paid_off],
                payment__status=PaymentStatus.PROVISIONAL,
                reversed_at__isnull=True,
            ).values_list("contract_id", flat=True)
        )
        paid_off = [c for c in paid_off if c.pk not in pending]
    if paid_off:
        # The rows are locked (contracts_lock_for_allocation): no concurrent status change can be overwritten.
        Contract.objects.filter(pk__in=[c.pk for c in paid_off]).update(status=ContractStatus.PAID_OFF)
        audit_record_many(
            actor=actor,
            entries=[
                AuditEntry(
                    action="contract.status",
                    obj=contract,
                    before={"status": contract.status},
                    after={"status": ContractStatus.PAID_OFF},
                )
                for contract in paid_off
            ],
        )
    return paid_off


def contracts_decide_locks(
    locked: LockedContracts, paid_off: list[Contract], *, now: dt.datetime, actor: Actor
) -> None:
    """The lock decision for every contract the batch may have changed."""
    # Unlock at once: decided on the rows as they are now, commands signed in this
    # transaction. Money only ever moves a contract towards unlocked, so a contract
    # already unlocked and still running has nothing to decide (its next due date is
    # the sweep's); deciding the thousands of those a statement touches would cost
    # more than crediting them.
    paid_off_ids = {c.pk for c in paid_off}
    # A released contract is final.
    settled = (LockState.UNLOCKED, LockState.RELEASED)
    to_decide = [
        pk for pk in locked.contract_ids if locked.contracts[pk].lock_state not in settled or pk in paid_off_ids
    ]
    if to_decide:
        contracts_lock_evaluate(contract_ids=to_decide, now=now, actor=actor)
