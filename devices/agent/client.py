"""The device API over HTTP (``/api/device/v1/``), with the standard library only.

A phone agent should not drag in an HTTP stack; ``urllib.request`` does JSON POSTs with a
timeout, which is all the device API needs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Protocol
from urllib.parse import urlsplit

API_PREFIX = "/api/device/v1/"
DEFAULT_TIMEOUT = 15.0


class ApiError(RuntimeError):
    """The server could not be reached or refused the call; ``status`` is None when unreachable."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


class Transport(Protocol):
    """What the agent needs from the network; tests pass a fake with the same method."""

    def post(self, server_url: str, call: str, body: dict[str, Any], credential: str | None = None) -> dict[str, Any]:
        """POST ``body`` to ``<server_url>/api/device/v1/<call>`` and return the JSON answer."""
        ...


class HttpTransport:
    """JSON over HTTP(S) with ``Authorization: Device <credential>``."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, user_agent: str = "finlock-reference-agent"):
        self.timeout = timeout
        self.user_agent = user_agent

    def post(self, server_url: str, call: str, body: dict[str, Any], credential: str | None = None) -> dict[str, Any]:
        url = server_url.rstrip("/") + API_PREFIX + call
        if urlsplit(url).scheme not in ("http", "https"):
            # urlopen would also open file:// and ftp:// URLs; a server is only ever HTTP(S).
            raise ApiError(f"the server URL must start with http:// or https://, not {server_url!r}")
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": self.user_agent,
        }
        if credential:
            headers["Authorization"] = f"Device {credential}"
        request = urllib.request.Request(  # noqa: S310 (scheme checked above)
            url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _decode(exc.read())
            raise ApiError(f"POST {url} answered {exc.code}: {_short(detail)}", status=exc.code, body=detail) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach {url}: {reason}") from exc
        answer = _decode(raw)
        if not isinstance(answer, dict):
            raise ApiError(f"POST {url} did not answer a JSON object: {_short(answer)}")
        return answer


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw[:200].decode("utf-8", "replace")


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."
