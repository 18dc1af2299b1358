"""gunicorn settings; gunicorn reads ./gunicorn.conf.py by itself, command-line flags override it."""

import os
import sys

from gunicorn.glogging import Logger

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:  # started with -c from another directory
    sys.path.insert(0, _here)

from portal.log_filters import RedactSecrets  # noqa: E402 - needs the path above

# A 100,000-row device upload takes tens of seconds on a small machine; gunicorn's default
# 30 s would kill the worker mid-request (the upload is atomic, so nothing half-applies,
# but the caller sees a 500). Phones and staff pages answer in milliseconds regardless.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "180"))
graceful_timeout = 30
# Recycle workers now and then so a slow leak in a dependency never grows unbounded.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "5000"))
max_requests_jitter = 500


class RedactingLogger(Logger):
    """gunicorn's logger with secrets masked in the access log (``--access-logfile``) and the error log.

    The M-Pesa callbacks carry the provider's API key in the URL (``?key=``); see
    portal/log_filters.py, which Django's own logging uses too.
    """

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, RedactSecrets) for f in log.filters):
                log.addFilter(RedactSecrets())


logger_class = RedactingLogger
