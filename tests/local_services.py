"""Helpers for stories with real local services: a free port, waiting for a condition, and a
redis-server of the test's own that it may stop.

The ``private_redis`` fixture (tests/conftest.py) gives each test its own; never the shared Redis.
"""

from __future__ import annotations

import socket
import subprocess
import time


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    """True as soon as ``predicate()`` is, polling every ``interval`` seconds for up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A throw-away redis-server (no persistence) that the test can stop and start again."""

    def __init__(self, port: int, log_path):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--daemonize", "no"],
            stdout=open(self.log_path, "a"),  # noqa: SIM115 - lives as long as the process
            stderr=subprocess.STDOUT,
        )
        assert wait_for(self.answers, timeout=10), f"redis-server did not start on port {self.port}"

    def answers(self) -> bool:
        import redis

        try:
            return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        assert wait_for(lambda: not self.answers(), timeout=5)
