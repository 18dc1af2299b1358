"""Daraja's ?key= never reaches a log, whichever server the README says to run.

Stories (real servers in their own processes, with the repository's logging configuration):
* ``manage.py runserver`` (what ``./dev demo`` serves) logs each request line, and a Daraja
  callback with the provider's API key in the URL is logged with the key masked, also when
  the key is percent-encoded inside another parameter;
* gunicorn with its access log switched on (``--access-logfile -``) does the same through
  ``gunicorn.conf.py``;
* a client's mistake (a 4xx) is logged without a traceback, a server error keeps its own.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
import requests
from django.conf import settings

from tests.local_services import free_port, wait_for


def _env(var_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    return env | {"FINLOCK_VAR_DIR": str(var_dir), "DEBUG": "1", "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A migrated SQLite site in its own directory with Jamii (KES) and an API key: ``(env, key)``."""
    var_dir = tmp_path_factory.mktemp("site")
    env = _env(var_dir)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=settings.BASE_DIR, env=env, check=True, timeout=300)
    script = (
        "from portal.models import Organisation; "
        "Organisation.objects.create(kind='provider', name='Jamii', slug='jamii', country='KE', currency='KES')"
    )
    subprocess.run([*manage, "shell", "-c", script], cwd=settings.BASE_DIR, env=env, check=True, timeout=120)
    out = subprocess.run(
        [*manage, "create_api_key", "jamii", "--name", "daraja"],
        cwd=settings.BASE_DIR,
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    return env, out.stdout.strip().splitlines()[-1]


def _serve(command: list[str], env, log_path):
    with open(log_path, "w") as log:
        return subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)


def _hit_with_the_key(base: str, key: str) -> None:
    body = {"TransID": "RKTQDM7W6S", "TransAmount": "10.00", "BillRefNumber": "X", "TransTime": "20260115103000"}
    assert wait_for(lambda: _answers(base), timeout=30), "the server did not start"
    for path in ("/api/v1/c2b/validation/", "/api/v1/c2b/confirmation/"):
        response = requests.post(f"{base}{path}?key={key}", json=body, timeout=30)
        assert response.status_code in (200, 400), response.text  # authenticated: the key was read
    requests.get(f"{base}/api/v1/c2b/confirmation/?other=1&key={key}", timeout=30)
    requests.get(f"{base}/login/?next={quote(f'/api/v1/c2b/confirmation/?key={key}', safe='')}", timeout=30)


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _stop(process) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _check(log: str, key: str) -> None:
    secret = key.split("_", 2)[2]
    assert key not in log and secret not in log, log
    assert "/api/v1/c2b/confirmation/?key=[redacted]" in log, log  # the line is logged, masked
    assert "/login/?next=%2Fapi%2Fv1%2Fc2b%2Fconfirmation%2F%3Fkey%3D[redacted]" in log, log


def test_runserver_logs_the_callbacks_with_the_key_masked(site, tmp_path):
    env, key = site
    port = free_port()
    log_path = tmp_path / "runserver.log"
    server = _serve([sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], env, log_path)
    try:
        _hit_with_the_key(f"http://127.0.0.1:{port}", key)
        time.sleep(0.3)  # the access line is written after the answer
    finally:
        _stop(server)
    _check(log_path.read_text(), key)


def test_gunicorn_with_its_access_log_on_logs_the_callbacks_with_the_key_masked(site, tmp_path):
    env, key = site
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    command = [gunicorn, "config.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    server = _serve([*command, "--access-logfile", "-", "--error-logfile", "-"], env, log_path)
    try:
        _hit_with_the_key(f"http://127.0.0.1:{port}", key)
        time.sleep(0.3)
    finally:
        _stop(server)
    _check(log_path.read_text(), key)


# --- the filters themselves ----------------------------------------------------------------------------

KEY = "fl_1a2b3c4d_Zm9vYmFyYmF6cXV4LXF1dXgtcXV1eF9xdXV4LXF1dXg"


@pytest.mark.parametrize(
    "line, kept",
    [
        (f'"POST /api/v1/c2b/confirmation/?key={KEY} HTTP/1.1" 200 40', '/confirmation/?key=[redacted] HTTP/1.1" 200'),
        (f"/api/v1/c2b/validation/?a=1&KEY={KEY}&b=2", "?a=1&KEY=[redacted]&b=2"),
        (f"/login/?next=%2Fapi%2F%3Fkey%3D{KEY}%26x%3D1", "%3Fkey%3D[redacted]%26x%3D1"),
        (f"Authorization: Bearer {KEY}", "Bearer [redacted]"),
        ("credential fld_" + "A" * 43 + " enrolled", "credential [redacted] enrolled"),
        ("token fle_" + "b" * 43, "token [redacted]"),
        ("monkey=1 primary key 5 fluffy", "monkey=1 primary key 5 fluffy"),
    ],
)
def test_key_parameters_and_secret_shaped_words_are_masked_and_nothing_else(line, kept):
    from portal.log_filters import redact

    assert kept in redact(line)
    assert KEY not in redact(line) and "A" * 43 not in redact(line)


def test_the_filters_mask_arguments_and_tracebacks_and_drop_a_client_errors_traceback():
    from portal.log_filters import ClientErrorsWithoutTraceback, RedactSecrets

    try:
        raise ValueError(f"bad url /c2b/?key={KEY}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "request %s", (f"?key={KEY}",), sys.exc_info())
    RedactSecrets().filter(record)
    formatted = logging.Formatter().format(record)
    assert KEY not in formatted and "?key=[redacted]" in formatted and "ValueError" in formatted

    for status, keeps_traceback in ((403, False), (400, False), (500, True)):
        try:
            raise PermissionError("nope")
        except PermissionError:
            record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "Forbidden", (), sys.exc_info())
        record.status_code = status
        ClientErrorsWithoutTraceback().filter(record)
        assert ("Traceback" in logging.Formatter().format(record)) is keeps_traceback, status
