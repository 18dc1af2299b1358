"""An operator deploying finlock gets told at once when the environment is wrong."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from portal.env import ImproperEnvironment, env_bool, env_int, env_url

ROOT = Path(__file__).resolve().parent.parent


def test_typed_helpers_fail_fast_naming_the_variable(monkeypatch):
    monkeypatch.setenv("X_BOOL", "maybe")
    with pytest.raises(ImproperEnvironment, match="X_BOOL"):
        env_bool("X_BOOL")
    monkeypatch.setenv("X_INT", "ten")
    with pytest.raises(ImproperEnvironment, match="X_INT must be an integer"):
        env_int("X_INT", 1)
    monkeypatch.setenv("X_INT", "0")
    with pytest.raises(ImproperEnvironment, match="at least 1"):
        env_int("X_INT", 1, minimum=1)
    monkeypatch.setenv("X_URL", "mysql://db")
    with pytest.raises(ImproperEnvironment, match="X_URL must be a URL with scheme postgres"):
        env_url("X_URL", schemes=("postgres",))


#: A deployment that starts: every key production requires, valid. Tests add or override.
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "x" * 20 + "-production-secret-not-in-the-repo-" + "y" * 20,
    "ALLOWED_HOSTS": "finlock.example.com",
    "DEVICE_SIGNING_KEY": "k2026a:" + "A" * 43 + "=",
    "AUDIT_HMAC_KEY": "audit2026a:" + "B" * 43 + "=",
}


def _manage(*args, env):
    """``manage.py <args>`` in a process that sees only ``env`` (plus PATH and HOME), never the run's own settings.

    Starting from an empty environment keeps the deployment under test apart from whatever the
    test run exports (CI's DATABASE_URL, an anonymous MQTT_URL, ...).
    """
    base = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=base | env, capture_output=True, text=True, timeout=120
    )


def test_production_settings_pass_the_deploy_check(tmp_path):
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "DEBUG": "0",
            "SECRET_KEY": "x" * 20 + "-production-secret-not-in-the-repo-" + "y" * 20,
            "ALLOWED_HOSTS": "finlock.example.com",
            "DEVICE_SIGNING_KEY": "k2026a:" + "A" * 43 + "=",
            "AUDIT_HMAC_KEY": "audit2026a:" + "B" * 43 + "=",
            "FINLOCK_VAR_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_without_an_audit_key_or_with_a_bad_one_refuses_to_start(tmp_path):
    production = {
        "DEBUG": "0",
        "SECRET_KEY": "s" * 60,
        "ALLOWED_HOSTS": "finlock.example.com",
        "DEVICE_SIGNING_KEY": "k2026a:" + "A" * 43 + "=",
        "FINLOCK_VAR_DIR": str(tmp_path),
    }
    result = _manage("check", env=production)
    assert result.returncode != 0
    assert "AUDIT_HMAC_KEY must be set when DEBUG is off" in result.stderr
    assert not (tmp_path / "audit-hmac-key").exists()
    for value, message in [
        ("a1:c2hvcnQ=", "AUDIT_HMAC_KEY: the key 'a1' must decode to 32 bytes, not 5"),
        ("a1:" + "B" * 43 + "=,a2:" + "C" * 43 + "=", "AUDIT_HMAC_KEY holds exactly one key"),
    ]:
        result = _manage("check", env=production | {"AUDIT_HMAC_KEY": value})
        assert result.returncode != 0 and message in result.stderr
    result = _manage(
        "check",
        env=production | {"AUDIT_HMAC_KEY": "a1:" + "B" * 43 + "=", "AUDIT_HMAC_RETIRED_KEYS": "a1:" + "C" * 43 + "="},
    )
    assert result.returncode != 0
    assert "AUDIT_HMAC_RETIRED_KEYS must not list the current key id 'a1'" in result.stderr


def test_production_without_a_secret_key_refuses_to_start(tmp_path):
    result = _manage("check", env={"DEBUG": "0", "ALLOWED_HOSTS": "x.example", "FINLOCK_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_a_malformed_database_url_refuses_to_start(tmp_path):
    result = _manage("check", env={"DATABASE_URL": "oracle://db", "FINLOCK_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "DATABASE_URL must be a URL with scheme" in result.stderr
