"""Shared fixtures: service gates, personas per role and tenant, API clients.

Service tests carry a marker (``postgres``, ``redis``, ``mqtt``). On a bare
machine they skip with the reason; with ``FINLOCK_REQUIRE_SERVICES=1`` (set by
``.ci/run``) a missing service fails the test instead.
"""

from __future__ import annotations

import re
import shutil
import socket
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from tests import factories
from tests.local_services import PrivateRedis, free_port


def _reachable(url: str | None, default_port: int) -> bool:
    if not url:
        return False
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _service_missing(marker: str) -> str | None:
    if marker == "postgres":
        if connection.vendor != "postgresql":
            return "needs PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/finlock"
    elif marker == "redis":
        if not _reachable(settings.REDIS_URL, 6379) or not settings.CELERY_BROKER_URL:
            return "needs Redis: set REDIS_URL=redis://127.0.0.1:6379/0 and start redis-server"
    elif marker == "mqtt":
        if not _reachable(settings.MQTT_URL, 1883):
            return "needs Mosquitto: set MQTT_URL=mqtt://127.0.0.1:1883 and start mosquitto"
    elif marker == "browser":
        import shutil

        if not shutil.which("chromium"):
            return "needs Debian's chromium (apt-get install chromium)"
    return None


def pytest_runtest_setup(item):
    for marker in ("postgres", "redis", "mqtt", "browser"):
        if item.get_closest_marker(marker) is None:
            continue
        reason = _service_missing(marker)
        if reason:
            if settings.FINLOCK_REQUIRE_SERVICES:
                pytest.fail(f"service required by FINLOCK_REQUIRE_SERVICES=1 is missing: {reason}", pytrace=False)
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fast_and_isolated(settings, tmp_path):
    # Password hashing at full strength makes the suite slow and proves nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MEDIA_ROOT = tmp_path / "private"
    settings.AUDIT_CHECKPOINT_FILE = tmp_path / "audit-checkpoints.jsonl"
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _transactional_flush_passes_the_audit_triggers(request):
    """Let a transactional test's teardown empty the tables on PostgreSQL.

    Django empties them with one TRUNCATE, which the audit trail's triggers refuse, as they
    must in production. This test session (a superuser, like ``_tamper`` in the audit tests)
    switches triggers off for its own connection just before that flush; Django closes the
    connection right after it, so no other test runs without the triggers.
    """
    marker = request.node.get_closest_marker("django_db")
    transactional = (marker is not None and marker.kwargs.get("transaction", False)) or bool(
        {"transactional_db", "live_server"} & set(request.fixturenames)
    )
    if not transactional or connection.vendor != "postgresql":
        yield
        return
    # Set up the database first, so this teardown runs before the database's flush.
    request.getfixturevalue("transactional_db")
    yield
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")


#: Every field known to hold a secret (a credential, its digest, key material, a one-time code).
SECRET_FIELDS: dict[str, set[str]] = {
    "portal.User": {"password"},
    "portal.ApiKey": {"digest"},
    "portal.ProviderWebhook": {"secret"},
    "devices.Device": {"credential_digest", "offline_secret", "offline_starting_code", "reenrollment_code_digest"},
    "devices.EnrollmentToken": {"digest"},
    "devices.DeviceGateway": {"secret"},
    "devices.OfflineCode": {"token"},
    "payments.Customer": {"national_id_digest"},
    "otp_totp.TOTPDevice": {"key"},
    "axes.AccessLog": {"session_hash"},
    "axes.AccessAttempt": {"post_data", "get_data"},
    "axes.AccessFailureLog": {"post_data", "get_data"},
}
#: A second net for fields added later (a device key, a re-enrolment code, a gateway secret...):
#: names that look secret must be reviewed before they may be audited.
LOOKS_SECRET = re.compile(r"secret|digest|password|passkey|passphrase|token|credential|private|(^|_)key$|hash")
REVIEWED_NOT_SECRET = {
    ("devices.DeviceCommand", "key_id"),
    ("payments.Contract", "number_key"),
    # Standard Webhooks rotation: when the old secret stops working (a time), and whether the
    # secret predates the whsec_ convention (a flag). Neither holds key material.
    ("portal.ProviderWebhook", "previous_secret_until"),
    ("portal.ProviderWebhook", "secret_legacy"),
}


def secrets_in(label: str, names) -> set[str]:
    """The names in an audited field list that hold (or look like they hold) a secret."""
    names = set(names)
    found = names & SECRET_FIELDS.get(label, set())
    found |= {n for n in names if LOOKS_SECRET.search(n) and (label, n) not in REVIEWED_NOT_SECRET}
    return found


@pytest.fixture(autouse=True)
def _no_secret_enters_the_audit_trail():
    """After every test: no field list ``snapshot`` used (``portal.services.AUDITED_FIELD_LISTS``) names a secret.

    So a new model snapshotted with ``fields=`` somewhere, or a new secret field added to an
    ``audit_fields`` list, fails the very test that exercised it.
    """
    yield
    from portal.audit import AUDITED_FIELD_LISTS

    leaks = {
        label: found
        for (label, _requested), fields in list(AUDITED_FIELD_LISTS.items())
        if (found := secrets_in(label, [f.name for f in fields]))
    }
    assert not leaks, f"secret-bearing fields would enter the audit trail: {leaks}"


# --- tenants -----------------------------------------------------------------


@pytest.fixture
def provider_a(db):
    """Dialog Finance, a Sri Lankan carrier in LKR."""
    return factories.ProviderFactory(
        name="Dialog Finance",
        slug="dialog",
        country="LK",
        currency="LKR",
        time_zone="Asia/Colombo",
        languages=["si", "ta", "en"],
        hotline_numbers=["+94777575727"],
    )


@pytest.fixture
def provider_b(db):
    """Jamii Phones Credit, a Kenyan lender in KES."""
    return factories.ProviderFactory(
        name="Jamii Phones Credit",
        slug="jamii",
        country="KE",
        currency="KES",
        time_zone="Africa/Nairobi",
        languages=["sw", "en"],
        hotline_numbers=["+254711000100"],
    )


@pytest.fixture
def service_center(provider_a):
    """A service center authorised by provider A only."""
    center = factories.OrganisationFactory(kind="service_center", name="Colombo Service Hub", slug="colombo-hub")
    center.served_providers.add(provider_a)
    return center


@pytest.fixture
def platform(db):
    return factories.OrganisationFactory(kind="platform", name="Platform", slug="platform")


# --- personas ----------------------------------------------------------------


@pytest.fixture
def admin_a(provider_a):
    return factories.UserFactory(username="admin.a", organisation=provider_a, role="provider_admin")


@pytest.fixture
def agent_a(provider_a):
    return factories.UserFactory(username="agent.a", organisation=provider_a, role="agent")


@pytest.fixture
def finance_a(provider_a):
    return factories.UserFactory(username="finance.a", organisation=provider_a, role="finance")


@pytest.fixture
def auditor_a(provider_a):
    return factories.UserFactory(username="auditor.a", organisation=provider_a, role="auditor")


@pytest.fixture
def agent_b(provider_b):
    return factories.UserFactory(username="agent.b", organisation=provider_b, role="agent")


@pytest.fixture
def technician(service_center):
    return factories.UserFactory(username="tech", organisation=service_center, role="technician")


@pytest.fixture
def operator(platform):
    return factories.UserFactory(username="operator", organisation=platform, role="operator", is_staff=True)


@pytest.fixture
def outsider(db):
    """A technician of a service center that serves no provider."""
    center = factories.OrganisationFactory(kind="service_center", name="Unlisted Repairs", slug="unlisted")
    return factories.UserFactory(username="outsider", organisation=center, role="technician")


def signed_in(client, user):
    """A test client signed in as ``user`` with two-factor already passed."""
    client.force_login(user)
    if user.requires_2fa:
        from django_otp.plugins.otp_totp.models import TOTPDevice

        device = TOTPDevice.objects.create(user=user, name="test", confirmed=True)
        session = client.session
        session["otp_device_id"] = device.persistent_id
        session.save()
    return client


@pytest.fixture
def as_user(client):
    return lambda user: signed_in(client, user)


# --- API ---------------------------------------------------------------------


@pytest.fixture
def api_a(provider_a):
    from portal.services import api_key_create

    _key, full = api_key_create(provider=provider_a, name="tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {full}")
    return client


@pytest.fixture
def api_b(provider_b):
    from portal.services import api_key_create

    _key, full = api_key_create(provider=provider_b, name="tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {full}")
    return client


# --- Browser (Playwright driving Debian's chromium) ----------------------------

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = settings.BASE_DIR / "var" / "screenshots"


@pytest.fixture
def browser(live_server, monkeypatch):
    """A headless Debian chromium driven by Playwright against ``live_server`` (never `playwright install`).

    Screenshots go to var/screenshots/<test name>-<step>.png (``shot(page, step)``).
    """
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls stay synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def browser_sign_in(page, base_url: str, user, password: str = "browser-pass-2026") -> None:
    """Sign ``user`` in through the real login form, typing the current TOTP code when the role needs one."""
    user.set_password(password)
    user.save(update_fields=["password"])
    device = None
    if user.requires_2fa:
        from django_otp.plugins.otp_totp.models import TOTPDevice

        device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(
            user=user, name="browser", confirmed=True
        )
    page.goto(f"{base_url}/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", password)
    page.get_by_role("button", name="Sign in").click()
    if device is not None:
        from django_otp.oath import totp

        page.wait_for_url("**/login/verify/**")
        code = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)
        page.fill("input[name=token]", f"{code:0{device.digits}d}")
        page.get_by_role("button", name="Verify").click()  # not the header's "Sign out"
    page.wait_for_load_state()


def shot(page, request, step: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}-{step}.png"), full_page=True)


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own, which it may stop and start (outage stories)."""
    if not shutil.which("redis-server"):
        if settings.FINLOCK_REQUIRE_SERVICES:
            pytest.fail("needs redis-server on PATH (FINLOCK_REQUIRE_SERVICES=1)")
        pytest.skip("needs redis-server on PATH (apt-get install redis-server)")
    server = PrivateRedis(free_port(), tmp_path / "redis.log")
    server.start()
    yield server
    server.stop()
