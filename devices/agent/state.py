"""What the phone keeps on disk, and how it writes it so a power cut never leaves half a state.

The state directory holds three things with three different lifetimes:

``agent.json`` (ordinary storage)
    The enrolment (device id, IMEIs, credential, server URL, MQTT account and password),
    what the screen shows, an acknowledgement not yet delivered, and the bounded log. A
    factory reset wipes this file, exactly as a reset wipes an app's data on a real phone.
``protected/lock.json`` (reset-protected storage)
    What a real finance-lock agent keeps in reset-protected storage (Android's persistent
    data block, where factory-reset protection lives): the phone's device key (the Ed25519
    private key it generated at its first enrolment: it signs every later enrolment, so the
    phone can enrol again after a reset and nobody else can); the OpenPAYGO secret and
    counters (a code cannot be typed twice by resetting in between); and the phone's
    protocol state (``devices.agent.phone.Phone``): device id, the trusted keys and the seq
    of the key statement that named them, the last applied seq and the command in force
    (with the one a temporary unlock returns to), what offline codes granted, and the
    trusted-time anchor, with the last trusted time checkpointed and the boot it was taken
    in (docs/lock-pipeline.md, "Offline lease": a restart keeps trusted time).
``user-data/``
    Stands in for the owner's photos and messages. The agent never deletes it, for any
    command and on a reset: the product promise is that a lock never costs the owner data.

Every write is atomic (temporary file, fsync, ``os.replace``, fsync of the directory) and
every read-modify-write runs under an exclusive ``flock``, so ``enter-code`` typed in one
process and the ``run`` loop in another never overwrite each other's counters.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

# 2: protocol v2 (the phone's protocol state moved to protected storage).
FORMAT = 2
LOG_LIMIT = 200

AGENT_FILE = "agent.json"
PROTECTED_DIR = "protected"
PROTECTED_FILE = "lock.json"
USER_DATA_DIR = "user-data"
LOCK_FILE = ".lock"


class StateError(RuntimeError):
    """The state directory cannot be read (corrupt file, wrong format)."""


@dataclass
class Enrolment:
    """Who this phone is to the server; all of it is lost on a factory reset."""

    device: str
    imei: str
    # Every IMEI of the phone (dual SIM: both slots); ``imei`` is the one it enrolled with.
    imeis: list[str] = field(default_factory=list)
    credential: str | None = None
    server_url: str | None = None
    mqtt_topic: str | None = None
    enrolled_at: str | None = None
    # The phone's own broker account from the enrolment answer (none on a broker without accounts).
    mqtt_username: str | None = None
    mqtt_password: str | None = None


@dataclass
class AgentState:
    """``agent.json``: the enrolment and what the screen shows (wiped by a factory reset)."""

    enrolment: Enrolment | None = None
    # A copy of the protected last applied seq, for the status page and the check-in report.
    last_seq: int = 0
    # What the phone shows now, and whether with the lease warning.
    state: str = "unlocked"
    warning: bool = False
    expires_at: str | None = None
    # An acknowledgement the server has not received yet: retried on every check-in.
    unacked: dict[str, Any] | None = None
    last_checkin_at: str | None = None
    log: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentState:
        enrolment = data.get("enrolment")
        return cls(
            enrolment=Enrolment(**_known(Enrolment, enrolment)) if enrolment else None,
            last_seq=int(data.get("last_seq") or 0),
            state=data.get("state") or "unlocked",
            warning=bool(data.get("warning")),
            expires_at=data.get("expires_at"),
            unacked=data.get("unacked"),
            last_checkin_at=data.get("last_checkin_at"),
            log=list(data.get("log") or []),
        )


@dataclass
class OfflineState:
    """OpenPAYGO Token secret and counters (what the codes granted is the phone's: ``Phone.offline_until``)."""

    secret: str | None = None
    starting_code: int | None = None
    last_count: int = 0
    used_counts: list[int] = field(default_factory=list)


@dataclass
class ProtectedState:
    """``protected/lock.json``: survives a factory reset, like a real agent's protected partition."""

    offline: OfflineState = field(default_factory=OfflineState)
    # The device key's 32-byte Ed25519 private seed (standard base64): losing it means
    # re-enrolling only with a re-enrolment code from the provider's staff.
    device_key: str | None = None
    # The phone's protocol state (``Phone.to_dict()``); None before the first enrolment.
    phone: dict[str, Any] | None = None
    # Trusted time checkpointed (at least hourly and at every write) and the boot it was
    # taken in: after a reboot the monotonic clock restarts and trusted time resumes here.
    elapsed: str | None = None
    boot_id: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProtectedState:
        return cls(
            offline=OfflineState(**_known(OfflineState, data.get("offline") or {})),
            device_key=data.get("device_key"),
            phone=data.get("phone"),
            elapsed=data.get("elapsed"),
            boot_id=data.get("boot_id"),
        )


def _known(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    """The members of ``data`` the dataclass ``kind`` has (a newer agent's extra members are ignored)."""
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in data.items() if k in names}


def append_log(state: AgentState, entry: dict[str, Any]) -> None:
    """Add to the log, keeping the newest ``LOG_LIMIT`` entries (a phone's disk is not a database)."""
    state.log.append(entry)
    del state.log[:-LOG_LIMIT]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that ``path`` holds either the old or the new content, never a torn file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Temporary file in the same directory, fsync, rename over ``path``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename itself must reach the disk too, or a power cut could bring the old file back.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError(f"{path} is not a finlock agent state file (format {FORMAT})")
    return data


class Store:
    """The state directory: loads and saves the two state files and guards them with a lock."""

    def __init__(self, state_dir: str | os.PathLike[str]):
        self.root = Path(state_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.agent_path = self.root / AGENT_FILE
        self.protected_path = self.root / PROTECTED_DIR / PROTECTED_FILE
        self.user_data_dir = self.root / USER_DATA_DIR
        self.user_data_dir.mkdir(exist_ok=True)
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_fh: IO[str] | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive access for one read-modify-write, across threads (MQTT) and processes (CLI)."""
        with self._thread_lock:
            if self._depth == 0:
                self._lock_fh = open(self.root / LOCK_FILE, "a+")  # noqa: SIM115 (held across the block)
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fh is not None:
                    fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
                    self._lock_fh.close()
                    self._lock_fh = None

    def load_agent(self) -> AgentState:
        data = _read_json(self.agent_path)
        return AgentState.from_dict(data) if data else AgentState()

    def load_protected(self) -> ProtectedState:
        data = _read_json(self.protected_path)
        return ProtectedState.from_dict(data) if data else ProtectedState()

    def save_agent(self, state: AgentState) -> None:
        write_json_atomic(self.agent_path, {"format": FORMAT, **asdict(state)})

    def save_protected(self, protected: ProtectedState) -> None:
        write_json_atomic(self.protected_path, {"format": FORMAT, **asdict(protected)})

    def wipe_agent(self) -> None:
        """What a factory reset does to the agent: its enrolment file is gone. Nothing else."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.agent_path)
