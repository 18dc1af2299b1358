"""Logging filters: secrets never reach a log line, and a client's mistake logs no traceback.

Daraja cannot send headers, so the M-Pesa callbacks take the provider's API key in the URL
(``?key=fl_...``), and every access log writes request lines. ``RedactSecrets`` masks, in
each record's message and traceback:

* the value of a ``key`` query parameter, also percent-encoded inside another parameter
  (``next=/api/v1/c2b/confirmation/%3Fkey%3D...``);
* anything shaped like a finlock secret wherever it appears: an API key ``fl_<prefix>_<secret>``,
  a device credential ``fld_...`` or an enrolment token ``fle_...``.

It is attached to every handler in ``settings.LOGGING`` (so runserver's ``django.server``
access lines too) and to gunicorn's access and error logs by ``gunicorn.conf.py``. Imports
nothing from Django: gunicorn loads it before the application.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

_KEY_PARAM = re.compile(r"(?i)((?:[?&;]|%3F|%26)key(?:=|%3D))((?:(?!%26)[^&\s\"'#;<>])*)")
_SECRET = re.compile(r"\bfl_[0-9a-fA-F]{4,16}_[A-Za-z0-9_\-]+|\bfl[de]_[A-Za-z0-9_\-]{16,}")


def redact(text: str) -> str:
    """``text`` with key parameters' values and finlock secrets replaced by ``[redacted]``."""
    if "key" not in text.lower() and "fl" not in text:
        return text
    return _SECRET.sub(REDACTED, _KEY_PARAM.sub(lambda m: m.group(1) + REDACTED, text))


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's message (arguments included) and traceback; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's problem, not ours
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class ClientErrorsWithoutTraceback(logging.Filter):
    """Keeps the line but drops the traceback of a request that ended in a 4xx (Django logs one for 403 and 400).

    A PermissionDenied or a malformed request is the client's doing; its traceback only buries
    the tracebacks of real server errors (5xx), which are kept, so "a traceback in the log"
    keeps meaning "a bug to fix".
    """

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if record.exc_info and isinstance(status, int) and 400 <= status < 500:
            record.exc_info = None
            record.exc_text = None
        return True
