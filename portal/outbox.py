"""The one outbox: how finlock pushes durable rows to the outside world, whatever the rows are.

Two tables are outboxes: ``devices.DeviceCommand`` (signed commands to phones, over MQTT and
the provider's device gateway: ``devices.delivery``) and ``portal.WebhookEvent`` (events to a
provider's webhook endpoints: ``portal.webhooks``). A row is written in the same transaction as
the change it carries, so it exists exactly when the change committed; from then on this module
owns its bookkeeping, identically for both:

* **claim**: one worker owns a row for the whole push (:meth:`OutboxTable.claim`);
* **backoff**: a failed round waits ``portal.outbound.backoff_seconds`` (exponential, jittered);
* **dead letters**: after ``DELIVERY_MAX_ATTEMPTS`` failed rounds the row is dead, shown to staff;
* **redeliver pending**: the periodic job queues every due row by the delivering task's
  registered name (``portal.queue.enqueue_each``), which is what makes a broker outage lose nothing;
* **retry from the portal**: a dead row gets a fresh set of attempts, audited with before and after.

The columns every outbox table has: ``attempts``, ``next_attempt_at``, ``delivered_at``,
``dead_at`` and ``last_error``. What differs (what is pushed where, what a retry must also
reset or refuse) stays with the table's owner, which describes its table with an
:class:`OutboxTable`. Every outbound HTTP call goes through ``portal.outbound.signed_post``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from celery.app.task import Task
from celery.exceptions import Retry
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from portal.audit import audited_update
from portal.models import Organisation
from portal.outbound import backoff_seconds
from portal.queue import enqueue_each
from portal.types import Actor

logger = logging.getLogger(__name__)

#: A task arriving this early before ``next_attempt_at`` still counts as due (clocks of workers differ a little).
DUE_TOLERANCE = timedelta(seconds=2)
#: Errors stored on a row are cut to this length (an endpoint could answer with a whole HTML page).
ERROR_LIMIT = 1000
#: The bookkeeping columns a push round writes, on every outbox table.
ROUND_FIELDS = ("attempts", "next_attempt_at", "last_error")
#: What a retry from the portal resets (and audits), on every outbox table.
RETRY_FIELDS = ("attempts", "next_attempt_at", "dead_at", "last_error")

Row = TypeVar("Row", bound=models.Model)


@dataclass(frozen=True)
class Outcome:
    """What one delivery run did.

    ``status`` is one of ``delivered``, ``retry`` (``retry_in`` is the backoff in seconds),
    ``dead``, ``busy`` (another worker holds the row), ``not_due`` (a duplicate task arrived
    before the next attempt is due), ``closed`` (already delivered or dead) and ``missing``
    (no such row); a table's owner may add its own (``superseded``, ``no_channel``).
    """

    status: str
    retry_in: float | None = None


@dataclass(frozen=True)
class OutboxTable(Generic[Row]):
    """One outbox table: its model and how its rows are named, queued and logged."""

    model: type[Row]
    #: The registered name of the task that delivers one row by id (``"devices.deliver_command"``).
    task_name: str
    #: The rows' name in log lines ("command", "event").
    what: str
    #: The prefix of this outbox's log lines ("deliver", "webhooks").
    log_prefix: str
    #: The prefix of the periodic job's log line ("redeliver", "webhooks").
    redeliver_log_prefix: str
    #: Relations loaded with the claimed row (only the row itself is locked).
    claim_related: tuple[str, ...] = ()
    #: Rows written without ``next_attempt_at`` are due at once (commands); else it is always set (events).
    unscheduled_is_due: bool = False

    # --- queueing -------------------------------------------------------------------

    def enqueue(self, ids: Iterable[int]) -> int:
        """Queue delivery tasks for ``ids`` (for ``transaction.on_commit``); return how many were queued.

        Never raises for a broker outage: the rows are durable, so a failed enqueue only
        delays them until :meth:`redeliver_pending` runs after the broker is back.
        """
        return len(enqueue_each(self.task_name, ids, what=self.what))

    def pending(self, now: dt.datetime) -> QuerySet[Row]:
        """Rows still to be pushed whose next attempt is due (served by the table's partial index)."""
        due = Q(next_attempt_at__lte=now)
        if self.unscheduled_is_due:
            due |= Q(next_attempt_at__isnull=True)
        return self.model._default_manager.filter(delivered_at__isnull=True, dead_at__isnull=True).filter(due)

    def redeliver_pending(self, *, now: dt.datetime | None = None, limit: int = 1000) -> int:
        """Re-queue every due, undelivered row (the periodic job); return how many were queued.

        This is what makes an outage lose nothing: a row whose task never reached the broker,
        was dropped with a restarted Redis, or whose retry could not be scheduled is still a
        pending row, and is picked up here. Oldest due first; ``limit`` bounds one run, the
        next run continues.
        """
        now = now or timezone.now()
        ids = list(
            self.pending(now)
            .order_by(F("next_attempt_at").asc(nulls_first=True), "id")
            .values_list("id", flat=True)[:limit]
        )
        if not ids:
            return 0
        queued = self.enqueue(ids)
        logger.info("%s: %s of %s due %s(s) queued", self.redeliver_log_prefix, queued, len(ids), self.what)
        return queued

    # --- one delivery run -----------------------------------------------------------

    def claim(self, row_id: int) -> Row | Outcome:
        """Lock the row for this transaction if it is open and due; else the ``Outcome`` that ends the run.

        Call inside ``transaction.atomic``: the claim lasts until the transaction ends.
        """
        # Race prevented: the same row can be queued twice (the on-commit task and the periodic
        # redelivery, or a broker redelivering an unacknowledged task), and two workers would push
        # it twice at once and both count the attempt. The row lock makes one worker own the row
        # for the whole push; SKIP LOCKED makes the other return "busy" at once instead of waiting
        # to push it again. OF self: lock only the row, not the related rows joined in.
        row = (
            self.model._default_manager.select_for_update(skip_locked=True, of=("self",))
            .select_related(*self.claim_related)
            .filter(pk=row_id)
            .first()
        )
        if row is None:
            if self.model._default_manager.filter(pk=row_id).exists():
                return Outcome("busy")
            logger.warning("%s: %s %s does not exist", self.log_prefix, self.what, row_id)
            return Outcome("missing")
        bookkeeping: Any = row
        if bookkeeping.delivered_at is not None or bookkeeping.dead_at is not None:
            return Outcome("closed")
        due = bookkeeping.next_attempt_at
        if due is not None and due > timezone.now() + DUE_TOLERANCE:
            # A duplicate task (redelivery, broker re-queue) arriving before the backoff is over.
            return Outcome("not_due")
        return row

    def settle(self, row: Row, *, error: str, label: str, extra_fields: Sequence[str] = ()) -> Outcome:
        """Close a push round whose ``attempts`` the caller has counted: delivered, retry or dead.

        ``error`` empty means every push succeeded. ``label`` names the row in the dead letter's
        log line; ``extra_fields`` are other columns the caller set on ``row`` this round.
        """
        bookkeeping: Any = row
        finished = timezone.now()
        fields = [*ROUND_FIELDS, *extra_fields]
        bookkeeping.last_error = error
        if not error:
            bookkeeping.delivered_at = finished
            bookkeeping.next_attempt_at = None
            row.save(update_fields=[*fields, "delivered_at"])
            return Outcome("delivered")
        if bookkeeping.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            bookkeeping.dead_at = finished
            bookkeeping.next_attempt_at = None
            row.save(update_fields=[*fields, "dead_at"])
            logger.warning("%s: %s dead after %s attempts: %s", self.log_prefix, label, bookkeeping.attempts, error)
            return Outcome("dead")
        delay = backoff_seconds(bookkeeping.attempts)
        bookkeeping.next_attempt_at = finished + timedelta(seconds=delay)
        row.save(update_fields=fields)
        return Outcome("retry", retry_in=delay)

    def park(self, row: Row, *, note: str, dead: bool, wait: timedelta | None = None) -> None:
        """End a run that pushed nothing (not an attempt): dead with ``note``, or looked at again after ``wait``."""
        bookkeeping: Any = row
        bookkeeping.last_error = note
        if dead:
            bookkeeping.dead_at = timezone.now()
            bookkeeping.next_attempt_at = None
            row.save(update_fields=[*ROUND_FIELDS, "dead_at"])
        else:
            bookkeeping.next_attempt_at = timezone.now() + (wait or timedelta(0))
            row.save(update_fields=["next_attempt_at", "last_error"])

    # --- dead letters ---------------------------------------------------------------

    def retry_dead(
        self,
        row: Row,
        *,
        actor: Actor,
        action: str,
        not_dead: str,
        ip_address: str | None = None,
        related: tuple[str, ...] = (),
        refuse: Callable[[Row], str | None] | None = None,
        organisation: Callable[[Row], Organisation | None] | None = None,
        also_reset: Mapping[str, Any] | None = None,
    ) -> Row:
        """Give a dead row a fresh set of attempts and queue it now; audited as ``action`` with before and after.

        ``ValidationError(not_dead)`` unless the row is dead; ``refuse`` may name another reason to
        refuse (``None``: go ahead). ``also_reset``: table-specific columns reset too (and audited).
        """
        with transaction.atomic():
            # Race prevented: two admins pressing Retry at once, or a retry racing a worker that
            # is still finishing the last attempt; the row lock orders them and the second sees
            # the row no longer dead.
            locked = self.model._default_manager.select_for_update(of=("self",)).select_related(*related).get(pk=row.pk)
            if getattr(locked, "dead_at", None) is None:
                raise ValidationError(not_dead)
            refusal = refuse(locked) if refuse is not None else None
            if refusal:
                raise ValidationError(refusal)
            extra = dict(also_reset or {})
            audited_update(
                locked,
                actor=actor,
                action=action,
                changes={"attempts": 0, "dead_at": None, "next_attempt_at": timezone.now(), "last_error": "", **extra},
                fields=(*RETRY_FIELDS, *extra),
                organisation=organisation(locked) if organisation is not None else None,
                ip_address=ip_address,
                clean=False,
            )
            pk = locked.pk
            transaction.on_commit(lambda: self.enqueue([pk]))
        return locked


def retry_later(task: Task, outcome: Outcome, *, log_prefix: str, what: str, row_id: int) -> None:
    """From a delivering task: on ``retry``, schedule the task again after the row's backoff.

    The retry is an optimisation for latency: the row already holds ``next_attempt_at``, so if
    the retry cannot be queued (broker down) the periodic redelivery picks the row up anyway.
    In eager mode (no broker) Celery would re-run the task at once, ignoring the countdown; the
    row simply waits for its ``next_attempt_at`` instead.
    """
    if outcome.status != "retry" or task.request.is_eager:
        return
    try:
        task.retry(countdown=outcome.retry_in, throw=True)
    except Retry:
        raise
    except Exception as exc:  # broker gone between the push and the retry: the row remembers
        logger.warning("%s: could not schedule the retry of %s %s (%s)", log_prefix, what, row_id, exc)
