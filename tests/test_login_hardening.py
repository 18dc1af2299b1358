"""Staff sign-in: lockout after repeated failures, TOTP for admins and operators, idle sessions expire."""

import time

import pytest
from django.conf import settings
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.models import AuditEvent


def _code(device: TOTPDevice) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"


def test_an_agent_signs_in_with_a_password_and_lands_on_home(client, agent_a):
    response = client.post("/login/", {"username": "agent.a", "password": "correct-horse-battery"}, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/"
    assert b"Dialog Finance" in response.content


def test_repeated_failures_lock_the_account_out_even_with_the_right_password(client, agent_a):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/login/", {"username": "agent.a", "password": "not-the-password"})
    response = client.post("/login/", {"username": "agent.a", "password": "correct-horse-battery"})
    assert response.status_code == 429
    assert b"Too many failed sign-in attempts" in response.content or b"locked" in response.content.lower()
    assert client.get("/").status_code == 302  # still not signed in
    assert AuditEvent.objects.filter(action="login.failed").count() >= settings.AXES_FAILURE_LIMIT


def test_a_provider_admin_without_an_authenticator_must_enrol_before_anything_else(client, admin_a):
    client.post("/login/", {"username": "admin.a", "password": "correct-horse-battery"})
    response = client.get("/settings/")
    assert response.status_code == 302 and response["Location"] == "/account/two-factor/"
    page = client.get("/account/two-factor/")
    assert page.status_code == 200 and b"<svg" in page.content
    device = TOTPDevice.objects.get(user=admin_a, confirmed=False)
    wrong = client.post("/account/two-factor/", {"token": "000000" if _code(device) != "000000" else "111111"})
    assert wrong.status_code == 200 and not TOTPDevice.objects.get(pk=device.pk).confirmed
    too_soon = client.post("/account/two-factor/", {"token": _code(device)})
    assert b"wait a few seconds" in too_soon.content  # guessing is throttled, even a right code
    time.sleep(1.1)  # django-otp's first back-off is one second
    done = client.post("/account/two-factor/", {"token": _code(device)})
    assert done.status_code == 302
    assert client.get("/settings/").status_code == 200
    assert AuditEvent.objects.filter(action="2fa.enrol", actor=admin_a).exists()


def test_a_user_with_an_authenticator_enters_a_code_after_the_password(client, admin_a):
    device = TOTPDevice.objects.create(user=admin_a, name="phone", confirmed=True)
    client.post("/login/", {"username": "admin.a", "password": "correct-horse-battery"})
    response = client.get("/settings/")
    assert response.status_code == 302 and response["Location"].startswith("/login/verify/")
    bad = client.post("/login/verify/?next=/settings/", {"token": "12345x"})
    assert bad.status_code == 200 and b"6 digits" in bad.content
    ok = client.post("/login/verify/?next=/settings/", {"token": _code(device), "next": "/settings/"})
    assert ok.status_code == 302 and ok["Location"] == "/settings/"
    assert client.get("/settings/").status_code == 200


def test_two_factor_is_available_to_everyone_not_forced_on_agents(client, agent_a):
    client.post("/login/", {"username": "agent.a", "password": "correct-horse-battery"})
    assert client.get("/").status_code == 200
    assert client.get("/account/two-factor/").status_code == 200


def test_the_next_parameter_cannot_send_a_user_elsewhere(client, admin_a):
    device = TOTPDevice.objects.create(user=admin_a, name="phone", confirmed=True)
    client.post("/login/", {"username": "admin.a", "password": "correct-horse-battery"})
    ok = client.post("/login/verify/", {"token": _code(device), "next": "https://evil.example/"})
    assert ok["Location"] == "/"


def test_sessions_expire_when_idle_and_at_browser_close():
    assert settings.SESSION_COOKIE_AGE == 30 * 60
    assert settings.SESSION_SAVE_EVERY_REQUEST
    assert settings.SESSION_EXPIRE_AT_BROWSER_CLOSE


@pytest.mark.parametrize("path", ["/admin/", "/audit/", "/devices/", "/contracts/"])
def test_pages_need_a_signed_in_user(client, path, db):
    response = client.get(path)
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_the_session_key_changes_when_the_second_factor_succeeds_and_the_old_one_is_dead(client, admin_a):
    from django.test import Client

    device = TOTPDevice.objects.create(user=admin_a, name="phone", confirmed=True)
    client.post("/login/", {"username": "admin.a", "password": "correct-horse-battery"})
    before = client.cookies[settings.SESSION_COOKIE_NAME].value
    ok = client.post("/login/verify/", {"token": _code(device), "next": "/settings/"})
    assert ok.status_code == 302 and ok["Location"] == "/settings/"
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert after != before
    assert client.get("/settings/").status_code == 200  # the new key carries the verified session
    stale = Client()
    stale.cookies[settings.SESSION_COOKIE_NAME] = before
    response = stale.get("/settings/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_enrolling_an_authenticator_also_gives_the_session_a_new_key(client, admin_a):
    client.post("/login/", {"username": "admin.a", "password": "correct-horse-battery"})
    client.get("/account/two-factor/")
    before = client.cookies[settings.SESSION_COOKIE_NAME].value
    device = TOTPDevice.objects.get(user=admin_a, confirmed=False)
    assert client.post("/account/two-factor/", {"token": _code(device)}).status_code == 302
    assert client.cookies[settings.SESSION_COOKIE_NAME].value != before
    assert client.get("/settings/").status_code == 200


def test_the_admin_shows_a_signed_in_non_staff_user_the_403_page_not_a_redirect_loop(client, agent_a):
    client.post("/login/", {"username": "agent.a", "password": "correct-horse-battery"})
    response = client.get("/admin/", follow=True)
    assert response.status_code == 403
    assert len(response.redirect_chain) <= 1
    assert client.get("/admin/login/?next=/admin/").status_code == 403
    # The 403 page is finlock's own, with the way back (review: a bare "403 Forbidden" had none).
    html = response.content.decode()
    assert "You cannot do this" in html and 'href="/"' in html and "Sign out" in html


def test_the_admin_still_sends_a_stranger_to_the_portal_sign_in_and_staff_through(client, operator):
    response = client.get("/admin/", follow=True)
    assert response.redirect_chain[-1][0].startswith("/login/?next=")
    assert response.status_code == 200 and b"Sign in to finlock" in response.content
    from tests.conftest import signed_in

    signed_in(client, operator)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/login/?next=/admin/portal/").headers["Location"] == "/admin/portal/"
