"""Behind a reverse proxy every limit and audit event sees the real client, and nobody can choose their address.

Stories (``TRUSTED_PROXIES``; one helper, ``portal.http.client_ip``):
* without trusted proxies, X-Forwarded-For is ignored: the peer's address counts;
* from a trusted proxy, X-Forwarded-For is read from the right, skipping trusted proxies;
  a malformed header falls back to the peer;
* a client talking to finlock directly cannot escape the sign-in lockout, the enrolment
  limit or the self-service limit by writing X-Forwarded-For;
* two clients behind the same trusted proxy are limited apart (one is locked out, the
  other is not), and the audit trail records each one's own address.
"""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from portal.env import ImproperEnvironment
from portal.http import client_ip  # the one helper (portal.http), under its original import
from portal.models import AuditEvent
from selfservice.ratelimit import RATE_LIMIT_TRIES

PROXY = "10.0.0.5"
ENROLL = "/api/device/v1/enroll"


def ip_of(settings, remote_addr: str, forwarded: str | None = None, trusted=()) -> str | None:
    settings.TRUSTED_PROXIES = list(trusted)
    meta = {"REMOTE_ADDR": remote_addr}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    return client_ip(RequestFactory().get("/", **meta))


# --- the rule ------------------------------------------------------------------------------


def test_without_trusted_proxies_x_forwarded_for_is_ignored(settings):
    assert ip_of(settings, "203.0.113.9", "198.51.100.1") == "203.0.113.9"


def test_a_spoofed_header_from_an_untrusted_peer_is_ignored(settings):
    assert ip_of(settings, "203.0.113.9", "198.51.100.1", trusted=[PROXY]) == "203.0.113.9"


def test_from_a_trusted_proxy_the_first_untrusted_address_from_the_right_is_the_client(settings):
    trusted = ["10.0.0.0/24", "192.0.2.10"]
    assert ip_of(settings, PROXY, "198.51.100.1", trusted=trusted) == "198.51.100.1"
    # The client wrote "1.2.3.4" itself; the proxies appended what they saw, right to left.
    assert ip_of(settings, PROXY, "1.2.3.4, 198.51.100.1, 192.0.2.10", trusted=trusted) == "198.51.100.1"
    assert ip_of(settings, PROXY, " 2001:db8::7 ", trusted=trusted) == "2001:db8::7"
    # Only proxies in the chain: the leftmost is where the request started.
    assert ip_of(settings, PROXY, "10.0.0.9, 192.0.2.10", trusted=trusted) == "10.0.0.9"
    # A dual-stack socket reports an IPv4 proxy as ::ffff:10.0.0.5: still trusted.
    assert ip_of(settings, "::ffff:10.0.0.5", "198.51.100.1", trusted=trusted) == "198.51.100.1"


@pytest.mark.parametrize(
    "header", ["", "unknown", "198.51.100.1, not-an-ip", "198.51.100.1:443", "1.2.3.4," * 30 + "1.2.3.4", ","]
)
def test_a_malformed_header_from_a_trusted_proxy_falls_back_to_the_peer(settings, header):
    assert ip_of(settings, PROXY, header, trusted=[PROXY]) == PROXY


def test_trusted_proxies_are_read_from_the_environment_and_a_bad_entry_stops_start_up(monkeypatch):
    from portal.env import env_networks

    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.5, 10.1.0.0/16,fd00::/8")
    assert env_networks("TRUSTED_PROXIES") == ["10.0.0.5/32", "10.1.0.0/16", "fd00::/8"]
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.5,proxy.internal")
    with pytest.raises(ImproperEnvironment, match="TRUSTED_PROXIES.*proxy.internal"):
        env_networks("TRUSTED_PROXIES")
    assert django_settings.TRUSTED_PROXIES == []  # the default: no proxy is trusted


# --- every limit keys on the real client -------------------------------------------------------


def _fail_sign_in(client: Client, username: str, **meta):
    return client.post("/login/", {"username": username, "password": "not-the-password"}, **meta)


@pytest.mark.django_db
def test_the_sign_in_lockout_cannot_be_escaped_by_writing_x_forwarded_for(settings, agent_a):
    settings.TRUSTED_PROXIES = [PROXY]
    attacker = Client(REMOTE_ADDR="203.0.113.66")
    for n in range(django_settings.AXES_FAILURE_LIMIT):
        _fail_sign_in(attacker, "agent.a", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")
    answer = attacker.post(
        "/login/",
        {"username": "agent.a", "password": "correct-horse-battery"},
        HTTP_X_FORWARDED_FOR="198.51.100.200",
    )
    assert answer.status_code == 429
    failed = AuditEvent.objects.filter(action="login.failed")
    assert set(failed.values_list("ip_address", flat=True)) == {"203.0.113.66"}


@pytest.mark.django_db
def test_behind_the_proxy_one_clients_lockout_does_not_lock_out_another(settings, agent_a):
    settings.TRUSTED_PROXIES = [PROXY]
    via_proxy = Client(REMOTE_ADDR=PROXY)
    for _ in range(django_settings.AXES_FAILURE_LIMIT):
        _fail_sign_in(via_proxy, "agent.a", HTTP_X_FORWARDED_FOR="198.51.100.7")
    good = {"username": "agent.a", "password": "correct-horse-battery"}
    assert via_proxy.post("/login/", good, HTTP_X_FORWARDED_FOR="198.51.100.7").status_code == 429
    colleague = Client(REMOTE_ADDR=PROXY)
    assert colleague.post("/login/", good, HTTP_X_FORWARDED_FOR="198.51.100.8").status_code == 302
    assert set(AuditEvent.objects.filter(action="login.failed").values_list("ip_address", flat=True)) == {
        "198.51.100.7"
    }
    assert AuditEvent.objects.get(action="login").ip_address == "198.51.100.8"


@pytest.mark.django_db
def test_the_enrolment_limit_keys_on_the_real_client(settings, provider_a):
    settings.TRUSTED_PROXIES = [PROXY]
    settings.DEVICE_ENROLL_RATE = "3/min"
    body = {"imei": "490154203237518", "enrollment_token": "fle_wrong", "app_version": "1"}

    def enrol(remote: str, forwarded: str) -> int:
        client = APIClient(REMOTE_ADDR=remote)
        return client.post(ENROLL, body, format="json", HTTP_X_FORWARDED_FOR=forwarded).status_code

    # Directly connected: rotating X-Forwarded-For does not reset the count.
    assert [enrol("203.0.113.66", f"198.51.100.{n}") for n in range(4)] == [400, 400, 400, 429]
    # Through the proxy: one phone's shop is limited, another shop behind the same proxy is not.
    assert [enrol(PROXY, "198.51.100.30") for _ in range(4)] == [400, 400, 400, 429]
    assert enrol(PROXY, "198.51.100.31") == 400


@pytest.mark.django_db
def test_the_self_service_limit_keys_on_the_real_client(settings):
    settings.TRUSTED_PROXIES = [PROXY]
    form = {"identifier": "DLG-404", "phone": "0771234567"}

    def look_up(remote: str, forwarded: str) -> int:
        return Client(REMOTE_ADDR=remote).post("/my-phone/", form, HTTP_X_FORWARDED_FOR=forwarded).status_code

    answers = [look_up("203.0.113.66", f"198.51.100.{n}") for n in range(RATE_LIMIT_TRIES + 1)]
    assert answers == [200] * RATE_LIMIT_TRIES + [429]
    answers = [look_up(PROXY, "198.51.100.40") for _ in range(RATE_LIMIT_TRIES + 1)]
    assert answers == [200] * RATE_LIMIT_TRIES + [429]
    assert look_up(PROXY, "198.51.100.41") == 200


@pytest.mark.django_db
def test_the_api_throttle_and_the_audit_trail_see_the_client_behind_the_proxy(settings, provider_a, monkeypatch):
    from portal.api.throttling import ApiKeyRateThrottle
    from portal.services import api_key_create

    settings.TRUSTED_PROXIES = [PROXY]
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "1000/min"})
    key = api_key_create(provider=provider_a, name="erp")[1]
    api = APIClient(REMOTE_ADDR=PROXY)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = {"imei": "490154203237518", "serial_number": "SN-1", "maker": "Acme", "model": "A1"}
    response = api.post("/api/v1/devices/", body, format="json", HTTP_X_FORWARDED_FOR="198.51.100.50")
    assert response.status_code == 201, response.content
    assert AuditEvent.objects.get(action="device.create").ip_address == "198.51.100.50"
    # An unauthenticated caller's throttle identity is the client, never the header it wrote.
    throttle = ApiKeyRateThrottle()
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.66", HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert throttle.get_ident(request) == "203.0.113.66"
