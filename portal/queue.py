"""Queueing background work from services: by the task's registered name, never by importing ``tasks``.

Tasks are the worker side: each loads a row by id and calls one service. Services are below
them and never import a ``tasks`` module (that would be an import circle, since the task
imports the service); they name the task instead (``"devices.deliver_command"``) and Celery's
registry finds it, exactly as a worker does when a message arrives.

Every row we queue for is durable (a command, an event, an import, an account to sync), with a
periodic job that picks up whatever was not queued. So queueing never raises: the first broker
error ends the batch (each further try would wait out the same dead broker) and is logged; in
eager mode (no broker: the embedded default) the task runs right here, and its failure is logged
without stopping the other ids or failing the request that already committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import current_app
from celery.app.task import Task

from portal.outbound import BROKER_ERRORS

log = logging.getLogger(__name__)


def registered_task(name: str) -> Task:
    """The task registered under ``name``; ``KeyError`` when no installed app defines it.

    The web process imports no ``tasks`` module by itself: the first lookup runs Celery's own
    task discovery (every installed app's ``tasks`` module), as a worker does at start.
    """
    app = current_app
    if name not in app.tasks:
        app.autodiscover_tasks(force=True)
    return app.tasks[name]


def enqueue_each(task_name: str, ids: Iterable[int], *, what: str) -> list[int]:
    """Queue ``task_name(id)`` for each id; return the ids queued (all of them unless the broker failed).

    ``what`` names the rows in the log ("command", "event", ...). For ``transaction.on_commit``.
    """
    task = registered_task(task_name)
    pending = list(ids)
    queued: list[int] = []
    for row_id in pending:
        try:
            task.delay(row_id)
        except BROKER_ERRORS as exc:
            log.warning(
                "%s: broker unavailable (%s); %d %s(s) stay pending for the periodic job",
                task_name,
                exc,
                len(pending) - len(queued),
                what,
            )
            break
        except Exception:
            # Eager mode runs the task right here: its bug must not stop the others nor fail the request.
            log.exception("%s: running it in-process for %s %s failed", task_name, what, row_id)
        queued.append(row_id)
    return queued
