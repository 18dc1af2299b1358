"""Periodic jobs in-process: the embedded default's stand-in for Celery beat.

With no broker (``CELERY_TASK_ALWAYS_EAGER``) there is no beat process, yet the product must
still behave like itself while the demo serves: the lock sweep locks and unlocks, check-in
times are flushed, audit checkpoints are written, old commands are pruned. ``PeriodicRunner``
runs every entry of ``CELERY_BEAT_SCHEDULE`` (the one schedule; nothing is listed twice) on its
interval in one daemon thread, looking each task up by its registered name as a worker would.
With a broker, Celery beat does this and the runner is never started.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from django.db import close_old_connections

from portal.queue import registered_task

log = logging.getLogger(__name__)


class PeriodicRunner(threading.Thread):
    """Runs each scheduled task once per its interval (seconds), the first time one interval after start."""

    def __init__(
        self,
        schedule: Mapping[str, Mapping[str, Any]],
        *,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 1.0,
    ) -> None:
        super().__init__(name="finlock-periodic", daemon=True)
        self.entries = {name: float(entry["schedule"]) for name, entry in schedule.items()}
        self.tasks = {name: str(entry["task"]) for name, entry in schedule.items()}
        self.clock = clock
        self.tick = tick
        self.stopped = threading.Event()
        start = clock()
        self.next_at = {name: start + every for name, every in self.entries.items()}

    def run_due(self) -> list[str]:
        """Run every entry whose time has come; return their names (one failure never stops the others)."""
        now = self.clock()
        ran = []
        for name, due in sorted(self.next_at.items(), key=lambda item: item[1]):
            if due > now:
                continue
            # The next run counts from now, not from the missed slot: a slow job (a big sweep)
            # never makes the runner fire a burst of catch-up runs.
            self.next_at[name] = now + self.entries[name]
            close_old_connections()
            try:
                registered_task(self.tasks[name]).apply(throw=True)
            except Exception:
                log.exception(
                    "periodic job %s (%s) failed; it runs again in %.0f s", name, self.tasks[name], self.entries[name]
                )
            finally:
                close_old_connections()
            ran.append(name)
        return ran

    def run(self) -> None:
        log.info("Running %d periodic jobs in-process (no broker configured)", len(self.entries))
        while not self.stopped.wait(self.tick):
            self.run_due()

    def stop(self) -> None:
        self.stopped.set()
