"""Small typed readers for environment variables.

Every setting finlock reads from the environment goes through one of these so a
bad value stops the process at start-up with a message naming the variable,
instead of surfacing later as a confusing runtime error.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ImproperEnvironment(RuntimeError):
    """Raised when an environment variable holds a value we cannot use."""


def env_str(name: str, default: str | None = None, *, required: bool = False) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        if required:
            raise ImproperEnvironment(f"{name} must be set")
        return default
    return value


def env_path(name: str, default: Path) -> Path:
    """A filesystem path from the environment, else ``default``."""
    value = os.environ.get(name)
    return Path(value) if value else default


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperEnvironment(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperEnvironment(f"{name} must be an integer; got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperEnvironment(f"{name} must be at least {minimum}; got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None, maximum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperEnvironment(f"{name} must be a number; got {raw!r}") from None
    if value != value or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ImproperEnvironment(f"{name} must be between {minimum} and {maximum}; got {raw!r}")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(
    name: str, default: str | None = None, *, schemes: tuple[str, ...], credentials: bool = False
) -> str | None:
    """A URL with one of ``schemes``; with ``credentials``, it must carry ``user:password@``.

    Error messages never repeat a URL that may hold a password.
    """
    value = env_str(name, default)
    if value is None:
        return None
    parsed = urlparse(value)
    shown = repr(value) if parsed.password is None else "a URL with a password (not shown)"
    if parsed.scheme not in schemes:
        raise ImproperEnvironment(f"{name} must be a URL with scheme {' or '.join(schemes)}; got {shown}")
    if credentials and not (parsed.username and parsed.password):
        raise ImproperEnvironment(
            f"{name} must carry the account it signs in with: {parsed.scheme}://<user>:<password>@<host>:<port>"
        )
    return value


_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


def env_keyed_bytes(name: str, *, length: int) -> dict[str, bytes]:
    """Read ``<key_id>:<base64>[,<key_id>:<base64>...]`` into ``{key_id: bytes}``.

    Each value must decode to exactly ``length`` bytes; key ids are 1-40 letters,
    digits, dots, dashes or underscores (they travel in every signed command).
    """
    raw = env_str(name)
    if raw is None:
        return {}
    pairs: dict[str, bytes] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key_id, sep, encoded = item.partition(":")
        key_id = key_id.strip()
        if not sep or not _KEY_ID.match(key_id):
            raise ImproperEnvironment(
                f"{name} must be <key_id>:<base64 key>[,...] with a key id of letters, digits, '.', '-' or '_' "
                f"(at most 40); got an item starting {item[:12]!r}"
            )
        try:
            value = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ImproperEnvironment(f"{name}: the key {key_id!r} is not valid base64") from None
        if len(value) != length:
            raise ImproperEnvironment(f"{name}: the key {key_id!r} must decode to {length} bytes, not {len(value)}")
        if key_id in pairs:
            raise ImproperEnvironment(f"{name}: the key id {key_id!r} appears twice")
        pairs[key_id] = value
    return pairs


_RATE = re.compile(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$")


def env_rate(name: str, default: str) -> str:
    """A DRF throttle rate such as ``120/min`` (requests per s, min, hour or day)."""
    value = (env_str(name, default) or default).strip()
    if not _RATE.match(value):
        raise ImproperEnvironment(f"{name} must look like 120/min (per s, min, hour or day); got {value!r}")
    return value


def env_networks(name: str, default: list[str] | None = None) -> list[str]:
    """Comma-separated IP addresses or CIDR networks (``10.0.0.0/8,2001:db8::1``), each normalised."""
    networks = []
    for item in env_list(name, default):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ImproperEnvironment(
                f"{name} must be comma-separated IP addresses or networks (10.0.0.5, 10.0.0.0/8, fd00::/8); "
                f"got {item!r}"
            ) from None
    return networks
