"""gunicorn settings; gunicorn reads ./gunicorn.conf.py by itself, command-line flags override it."""

import os

# A 100,000-row device upload takes tens of seconds on a small machine; gunicorn's default
# 30 s would kill the worker mid-request (the upload is atomic, so nothing half-applies,
# but the caller sees a 500). Phones and staff pages answer in milliseconds regardless.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "180"))
graceful_timeout = 30
# Recycle workers now and then so a slow leak in a dependency never grows unbounded.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "5000"))
max_requests_jitter = 500
