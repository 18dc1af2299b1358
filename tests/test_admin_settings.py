"""A provider admin's settings: the lock screen as the phone draws it, payment channels, API keys, staff.

Stories:
* the admin edits the lock-screen text, previews it unsaved on a 360×800 phone (the
  reference agent's own rendering), saves it, and the next lock command carries the same
  words the preview showed;
* the admin adds, edits, reorders and deactivates payment channels, and the preview (and
  the next command) lists exactly the active ones in that order;
* the admin creates an API key that is shown once and works at once, rotates it, revokes it;
* the admin adds an agent (who sets their own password through a one-time link), changes
  the role, deactivates them, and can never deactivate themselves or leave no admin;
* another provider's admin gets 404 for every one of these objects, an agent gets 403,
  and every write leaves an audit event.
"""

from __future__ import annotations

import datetime as dt
import html
import re

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from devices.agent.render import ScreenView, render_html
from devices.models import DeviceCommand
from payments.locks.sweep import apply_decisions
from payments.models import LockScreenText, PaymentChannel
from portal.models import ApiKey, AuditEvent, User
from portal.services import staff_set_active
from tests.conftest import signed_in
from tests.factories import CustomerFactory, UserFactory, make_contract

TUESDAY_MORNING = dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC)  # 10:00 in Colombo, contracts past grace

TEXT = {
    "title": "{provider} locked this phone: call {hotline}",
    "body": "Pay {amount} for contract {contract} and the phone unlocks by itself.",
    "reminder_title": "Reminder from {provider}",
    "reminder_body": "Please pay {amount}.",
    "data_kept_notice": "Your photos and messages are kept.",
    "factory_reset_warning": "A factory reset will not remove the lock.",
    "offline_unlock_hint": "No internet? Call us for a code.",
}
CHANNEL = {
    "kind": "bank_transfer",
    "name": "Commercial Bank",
    "account": "8001234567",
    "reference": "{contract}",
    "instructions": "Any branch, or online banking.",
    "short_code": "",
}
DEVICES = "/api/v1/devices/"


@pytest.fixture
def admin_b(provider_b):
    return UserFactory(username="admin.b", organisation=provider_b, role="provider_admin")


def client_as(user) -> Client:
    """A separate browser for ``user`` (two personas in one story)."""
    return signed_in(Client(), user)


def bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def audited(action: str, actor) -> bool:
    return AuditEvent.objects.filter(action=action, actor=actor).exists()


def h1(page: str) -> str:
    return re.search(r"<h1>(.*?)</h1>", page).group(1)


def preview(client, language="en", **params) -> str:
    response = client.get(f"/locks/screen/{language}/preview/", params)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    return response.content.decode()


def lock_now(provider, number="DLG-7") -> dict:
    """Issue a real lock through the sweep's writer; returns the command's payload."""
    contract = make_contract(provider, number=number, customer=CustomerFactory(provider=provider))
    assert apply_decisions([contract.pk], now=TUESDAY_MORNING) == {"locked": 1}
    return DeviceCommand.objects.get(device=contract.device).payload


# --- the lock screen, as the phone draws it ------------------------------------------------


def test_the_admin_previews_unsaved_text_on_the_phone_then_saves_and_the_next_lock_shows_it(
    as_user, admin_a, provider_a
):
    client = as_user(admin_a)
    page = client.get("/locks/screen/en/")
    assert page.status_code == 200
    assert 'class="phone-screen" src="/locks/screen/en/preview/?state=locked"' in page.content.decode()
    assert "This phone is locked by Dialog Finance" in h1(preview(client))  # built-in wording until saved

    # "Preview": the unsaved text on the phone, nothing saved, nothing audited.
    response = client.post("/locks/screen/en/", {**TEXT, "action": "preview", "preview_state": "locked"})
    assert response.status_code == 200
    assert "/locks/screen/en/preview/?state=locked&amp;draft=1" in response.content.decode()
    assert not LockScreenText.objects.exists()
    assert not AuditEvent.objects.filter(action="lock_screen_text.change").exists()
    drawn = preview(client, state="locked", draft=1)
    assert h1(drawn) == "Dialog Finance locked this phone: call +94777575727"
    assert "Your photos and messages are kept." in drawn
    assert "Emergency call" in drawn
    assert "This phone is locked by" in h1(preview(client))  # without draft=1: what phones get today

    # Save: the preview (no draft) and the next real lock command show the same words.
    response = client.post("/locks/screen/en/", {**TEXT, "action": "save"})
    assert response.status_code == 302
    assert audited("lock_screen_text.change", admin_a)
    drawn = preview(client)
    payload = lock_now(provider_a)
    screen = payload["screen"]
    assert screen["title"] == "Dialog Finance locked this phone: call +94777575727"
    assert h1(drawn) == html.escape(screen["title"])
    assert screen["data_kept_notice"] in drawn and screen["factory_reset_warning"] in drawn
    # The phone draws the real command with the same title the admin saw.
    real = render_html(ScreenView(state="locked", screen=screen, allowed_numbers=payload["allowed_numbers"]))
    assert h1(real) == h1(drawn)
    assert screen["body"] == "Pay LKR\xa016,666.66 for contract DLG-7 and the phone unlocks by itself."


def test_the_reminder_screen_previews_the_reminder_wording(as_user, admin_a):
    client = as_user(admin_a)
    client.post("/locks/screen/en/", {**TEXT, "action": "preview", "preview_state": "reminder"})
    drawn = preview(client, state="reminder", draft=1)
    assert 'data-state="reminder"' in drawn and "Reminder from Dialog Finance" in drawn


def test_a_preview_with_an_unknown_placeholder_shows_the_error_and_no_phone(as_user, admin_a):
    response = as_user(admin_a).post("/locks/screen/en/", {**TEXT, "title": "Pay by {deadline}", "action": "preview"})
    body = response.content.decode()
    assert response.status_code == 200
    assert "Unknown placeholder {deadline}" in body and "Fix the text to see a preview." in body
    assert "phone-screen" not in body


def test_only_the_portal_itself_may_frame_the_preview(as_user, admin_a):
    client = as_user(admin_a)
    framed = client.get("/locks/screen/en/preview/")
    assert framed["X-Frame-Options"] == "SAMEORIGIN"
    policy = framed["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in policy and "default-src 'none'" in policy and "script-src 'none'" in policy
    assert framed["Cache-Control"] == "no-store"
    page = client.get("/locks/screen/en/")  # every other page still refuses to be framed
    assert page["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in page["Content-Security-Policy"]


# --- payment channels ------------------------------------------------------------------------


def test_the_admin_adds_a_payment_channel_and_the_phone_lists_it(as_user, admin_a, provider_a):
    client = as_user(admin_a)
    assert client.get("/locks/channels/").status_code == 200
    response = client.post("/locks/channels/new/", CHANNEL)
    assert response.status_code == 302 and response["Location"] == "/locks/channels/"
    channel = PaymentChannel.objects.get(provider=provider_a)
    assert channel.position == 0 and channel.active
    assert audited("payment_channel.create", admin_a)
    assert "Commercial Bank" in client.get("/locks/channels/").content.decode()

    drawn = preview(client)
    assert "Commercial Bank" in drawn and "8001234567" in drawn and "CONTRACT-0001" in drawn  # reference filled
    screen = lock_now(provider_a)["screen"]
    assert [c["account"] for c in screen["payment_channels"]] == ["8001234567"]
    assert screen["payment_channels"][0]["reference"] == "DLG-7"


def test_the_admin_edits_reorders_and_deactivates_channels_and_the_preview_follows(as_user, admin_a, provider_a):
    client = as_user(admin_a)
    client.post("/locks/channels/new/", CHANNEL)
    client.post(
        "/locks/channels/new/",
        {**CHANNEL, "kind": "mobile_money", "name": "eZ Cash", "account": "0771234567", "short_code": "123456"},
    )
    bank, ez = PaymentChannel.objects.filter(provider=provider_a).order_by("position")
    assert (bank.position, ez.position, ez.short_code) == (0, 1, "123456")
    drawn = preview(client)
    assert drawn.index("Commercial Bank") < drawn.index("eZ Cash")

    assert client.post(f"/locks/channels/{ez.pk}/move/", {"direction": "up"}).status_code == 302
    assert audited("payment_channel.reorder", admin_a)
    drawn = preview(client)
    assert drawn.index("eZ Cash") < drawn.index("Commercial Bank")

    response = client.post(f"/locks/channels/{bank.pk}/", {**CHANNEL, "account": "8009999999"})
    assert response.status_code == 302 and audited("payment_channel.change", admin_a)
    assert "8009999999" in preview(client)

    assert client.post(f"/locks/channels/{bank.pk}/deactivate/").status_code == 302
    assert audited("payment_channel.deactivate", admin_a)
    assert "Commercial Bank" not in preview(client)
    assert "Commercial Bank" in client.get("/locks/channels/").content.decode()  # kept, shown as inactive
    client.post(f"/locks/channels/{bank.pk}/activate/")
    assert audited("payment_channel.activate", admin_a) and "Commercial Bank" in preview(client)


def test_a_wrong_short_code_or_reference_is_refused_and_nothing_changes(as_user, admin_a):
    client = as_user(admin_a)
    response = client.post("/locks/channels/new/", {**CHANNEL, "short_code": "123456"})
    assert response.status_code == 200 and "Only a mobile-money (M-Pesa) channel has a short code." in (
        response.content.decode()
    )
    response = client.post("/locks/channels/new/", {**CHANNEL, "kind": "mobile_money", "short_code": "12"})
    assert response.status_code == 200 and "5 to 7 digits" in response.content.decode()
    response = client.post("/locks/channels/new/", {**CHANNEL, "reference": "{account_no}"})
    assert response.status_code == 200 and "Unknown placeholder {account_no}" in response.content.decode()
    assert not PaymentChannel.objects.exists()


# --- API keys ------------------------------------------------------------------------------


def test_an_api_key_is_shown_once_works_at_once_and_stops_when_revoked(as_user, admin_a, provider_a):
    client = as_user(admin_a)
    response = client.post("/settings/api-keys/new/", {"name": "Loan system"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    full = re.search(r'id="new-api-key">(fl_[0-9a-f]+_[\w-]+)<', response.content.decode()).group(1)
    key = ApiKey.objects.get(provider=provider_a, name="Loan system")
    assert key.created_by == admin_a and audited("api_key.create", admin_a)

    settings_page = client.get("/settings/").content.decode()
    assert f"fl_{key.prefix}_…" in settings_page and full not in settings_page  # never shown again

    assert bearer(full).get(DEVICES).status_code == 200
    assert client.post(f"/settings/api-keys/{key.pk}/revoke/").status_code == 302
    assert audited("api_key.revoke", admin_a)
    assert bearer(full).get(DEVICES).status_code == 401


def test_rotating_a_key_shows_the_new_one_once_and_the_old_one_stops_at_once(as_user, admin_a, provider_a):
    client = as_user(admin_a)
    old_full = re.search(
        r'id="new-api-key">([^<]+)<', client.post("/settings/api-keys/new/", {"name": "ERP"}).content.decode()
    ).group(1)
    old = ApiKey.objects.get(name="ERP")
    response = client.post(f"/settings/api-keys/{old.pk}/rotate/")
    assert response.status_code == 200
    new_full = re.search(r'id="new-api-key">([^<]+)<', response.content.decode()).group(1)
    assert new_full != old_full
    assert bearer(old_full).get(DEVICES).status_code == 401
    assert bearer(new_full).get(DEVICES).status_code == 200
    assert audited("api_key.rotate", admin_a)
    assert ApiKey.objects.filter(provider=provider_a, name="ERP", revoked_at__isnull=True).count() == 1
    response = client.post(f"/settings/api-keys/{old.pk}/rotate/", follow=True)  # a revoked key: no new key
    assert "create a new key instead" in response.content.decode()
    assert ApiKey.objects.filter(name="ERP").count() == 2


def test_a_key_without_a_name_is_refused(as_user, admin_a):
    response = as_user(admin_a).post("/settings/api-keys/new/", {"name": " "})
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    assert not ApiKey.objects.exists()


# --- staff and roles ---------------------------------------------------------------------


def test_the_admin_adds_an_agent_who_sets_their_own_password_then_changes_the_role_and_deactivates_them(
    as_user, admin_a, provider_a
):
    client = as_user(admin_a)
    response = client.post(
        "/settings/staff/new/",
        {
            "username": "nimal",
            "first_name": "Nimal",
            "last_name": "Perera",
            "email": "nimal@dialog.lk",
            "role": "agent",
        },
    )
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    nimal = User.objects.get(username="nimal")
    assert (nimal.organisation, nimal.role, nimal.has_usable_password()) == (provider_a, "agent", False)
    assert audited("staff.create", admin_a)
    link = re.search(r'id="set-password-link">http://testserver([^<]+)<', response.content.decode()).group(1)
    assert link not in client.get("/settings/").content.decode()

    # Nimal opens the link (no session of his own) and chooses a password; the link then stops working.
    nimal_browser = Client()
    form_page = nimal_browser.get(link, follow=True)
    assert form_page.status_code == 200 and b"Set password" in form_page.content
    done = nimal_browser.post(
        form_page.redirect_chain[-1][0], {"new_password1": "sapphire-lagoon-42", "new_password2": "sapphire-lagoon-42"}
    )
    assert done.status_code == 302 and done["Location"] == "/login/"
    nimal.refresh_from_db()
    assert nimal.check_password("sapphire-lagoon-42")
    assert AuditEvent.objects.filter(action="staff.password_set", actor=nimal).exists()
    assert b"does not work any more" in Client().get(link, follow=True).content

    response = client.post(f"/settings/staff/{nimal.pk}/", {"role": "finance"})
    assert response.status_code == 302
    nimal.refresh_from_db()
    assert nimal.role == "finance" and audited("staff.role_change", admin_a)

    assert client.post(f"/settings/staff/{nimal.pk}/deactivate/").status_code == 302
    nimal.refresh_from_db()
    assert not nimal.is_active and audited("staff.deactivate", admin_a)
    assert client_as(nimal).get("/contracts/").status_code == 302  # signed out: back to the login page

    client.post(f"/settings/staff/{nimal.pk}/activate/")
    nimal.refresh_from_db()
    assert nimal.is_active and audited("staff.activate", admin_a)
    response = client.post(f"/settings/staff/{nimal.pk}/password-link/")
    assert response.status_code == 200 and b'id="set-password-link"' in response.content
    assert audited("staff.password_link", admin_a)


def test_a_provider_admin_grants_only_their_providers_roles_and_usernames_stay_unique(as_user, admin_a, agent_a):
    client = as_user(admin_a)
    for role in ("operator", "technician"):
        response = client.post("/settings/staff/new/", {"username": f"x-{role}", "role": role})
        assert response.status_code == 200 and b"Select a valid choice" in response.content
    response = client.post("/settings/staff/new/", {"username": "AGENT.A", "role": "agent"})
    assert b"That username is taken" in response.content
    response = client.post("/settings/staff/new/", {"username": "second.admin", "role": "provider_admin"})
    assert response.status_code == 200 and User.objects.get(username="second.admin").role == "provider_admin"
    assert not User.objects.filter(username__startswith="x-").exists()


def test_the_admin_can_never_deactivate_or_demote_themselves(as_user, admin_a):
    client = as_user(admin_a)
    response = client.post(f"/settings/staff/{admin_a.pk}/deactivate/", follow=True)
    assert b"You cannot deactivate yourself" in response.content
    response = client.post(f"/settings/staff/{admin_a.pk}/", {"role": "agent"})
    assert b"You cannot change your own role" in response.content
    admin_a.refresh_from_db()
    assert admin_a.is_active and admin_a.role == "provider_admin"
    assert not AuditEvent.objects.filter(action__startswith="staff.").exists()


def test_the_last_active_admin_stays_even_when_two_admins_remove_each_other(admin_a, provider_a):
    other = UserFactory(username="admin.two", organisation=provider_a, role="provider_admin")
    staff_set_active(user=other, active=False, actor=admin_a)
    # The other admin's request was already in flight: it must not remove the last admin.
    with pytest.raises(ValidationError, match="last active admin"):
        staff_set_active(user=admin_a, active=False, actor=other)
    admin_a.refresh_from_db()
    assert admin_a.is_active


# --- tenancy and rights ---------------------------------------------------------------------


def _a_objects(admin_a, agent_a, provider_a):
    client = client_as(admin_a)
    client.post("/locks/channels/new/", CHANNEL)
    client.post("/settings/api-keys/new/", {"name": "A's system"})
    return PaymentChannel.objects.get(provider=provider_a), ApiKey.objects.get(provider=provider_a), agent_a


def test_another_providers_admin_gets_404_for_every_object_of_provider_a(admin_a, agent_a, provider_a, admin_b):
    channel, key, member = _a_objects(admin_a, agent_a, provider_a)
    client = client_as(admin_b)
    assert client.get(f"/locks/channels/{channel.pk}/").status_code == 404
    for url in (
        f"/locks/channels/{channel.pk}/",
        f"/locks/channels/{channel.pk}/move/",
        f"/locks/channels/{channel.pk}/deactivate/",
        f"/settings/api-keys/{key.pk}/rotate/",
        f"/settings/api-keys/{key.pk}/revoke/",
        f"/settings/staff/{member.pk}/",
        f"/settings/staff/{member.pk}/deactivate/",
        f"/settings/staff/{member.pk}/password-link/",
    ):
        assert client.post(url, {**CHANNEL, "role": "finance", "direction": "up"}).status_code == 404, url
    assert client.get(f"/settings/staff/{member.pk}/").status_code == 404
    channel.refresh_from_db()
    key.refresh_from_db()
    member.refresh_from_db()
    assert channel.active and key.revoked_at is None and member.is_active and member.role == "agent"
    # B's own pages show none of A's.
    assert b"Commercial Bank" not in client.get("/locks/channels/").content
    assert key.prefix.encode() not in client.get("/settings/").content
    assert b"Dialog" not in client.get("/locks/screen/sw/preview/").content


def test_an_agent_gets_403_and_changes_nothing(admin_a, agent_a, provider_a):
    channel, key, member = _a_objects(admin_a, agent_a, provider_a)
    client = client_as(agent_a)
    before = AuditEvent.objects.count()  # after the sign-in, which is audited too
    for url in ("/settings/", "/settings/api-keys/new/", "/settings/staff/new/", "/locks/channels/"):
        assert client.get(url).status_code == 403, url
    assert client.get("/locks/screen/en/preview/").status_code == 403
    assert client.get(f"/settings/staff/{admin_a.pk}/").status_code == 403
    for url in (
        "/settings/api-keys/new/",
        f"/settings/api-keys/{key.pk}/rotate/",
        f"/settings/api-keys/{key.pk}/revoke/",
        "/settings/staff/new/",
        f"/settings/staff/{admin_a.pk}/deactivate/",
        "/locks/channels/new/",
        f"/locks/channels/{channel.pk}/deactivate/",
        f"/locks/channels/{channel.pk}/move/",
    ):
        assert client.post(url, {"name": "x", "username": "x", "role": "agent", **CHANNEL}).status_code == 403, url
    assert AuditEvent.objects.count() == before
    assert ApiKey.objects.count() == 1 and PaymentChannel.objects.count() == 1


def test_an_outsider_sees_none_of_it(admin_a, agent_a, provider_a, outsider):
    channel, key, _member = _a_objects(admin_a, agent_a, provider_a)
    client = client_as(outsider)
    assert client.get("/settings/").status_code == 403
    assert client.post(f"/settings/api-keys/{key.pk}/revoke/").status_code == 404
    assert client.get(f"/locks/channels/{channel.pk}/").status_code == 404
    assert client.get(f"/settings/staff/{admin_a.pk}/").status_code == 404


# --- in a real browser: the frame really shows the agent's page --------------------------------


@pytest.mark.browser
def test_chromium_draws_the_agents_lock_screen_inside_the_360_by_800_frame(browser, live_server, admin_a, request):
    from tests.conftest import shot

    session = client_as(admin_a).cookies["sessionid"].value  # signed in, two-factor passed
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
    page = context.new_page()
    page.goto(f"{live_server.url}/locks/screen/en/")
    page.fill("input[name=title]", "Framed for {provider}")
    page.click("button[value=preview]")
    frame_element = page.wait_for_selector("iframe.phone-screen")
    box = frame_element.bounding_box()
    assert (round(box["width"]), round(box["height"])) == (360, 800)
    frame = frame_element.content_frame()
    frame.wait_for_selector("#emergency-call")
    assert frame.inner_text("h1") == "Framed for Dialog Finance"  # the unsaved text, drawn by the agent's page
    shot(page, request, "preview")
    context.close()


def test_an_admin_who_opens_an_agents_link_sees_whose_it_is_and_is_signed_out_after_setting_it(as_user, admin_a):
    """Review: the page said "Choose your password" under the admin's name and left the admin signed in."""
    client = as_user(admin_a)
    response = client.post("/settings/staff/new/", {"username": "kamala", "role": "agent"})
    link = re.search(r'id="set-password-link">http://testserver([^<]+)<', response.content.decode()).group(1)

    form_page = client.get(link, follow=True)
    html = form_page.content.decode()
    assert "Choose your password · kamala" in html
    assert "You are signed in as admin.a, but this link is for <strong>kamala</strong>" in html
    done = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "sapphire-lagoon-42", "new_password2": "sapphire-lagoon-42"},
        follow=True,
    )
    assert "The password of kamala is set. Sign in with it." in done.content.decode()
    assert client.get("/settings/").status_code == 302, "the admin's session ended"


def test_adding_staff_preselects_no_role(as_user, admin_a):
    """Review: the form started on "Provider admin", so a hurried admin made admins."""
    client = as_user(admin_a)
    html = client.get("/settings/staff/new/").content.decode()
    assert re.search(r'<option value="" selected>Choose a role…</option>', html)
    refused = client.post("/settings/staff/new/", {"username": "hurried"})
    assert "Choose the role this person needs" in refused.content.decode()
    assert not User.objects.filter(username="hurried").exists()


def test_the_settings_page_links_every_part_of_the_settings_each_app_contributes(as_user, admin_a, finance_a):
    """Each app adds its own tab (portal names none of them): lock screen, channels, policy, webhooks, tokens."""
    page = as_user(admin_a).get(reverse("portal:settings")).content.decode()
    tabs = page[page.index('aria-label="More settings"') :].split("</nav>")[0]
    wanted = ["locks:screen", "locks:channels", "locks:policy", "portal:webhooks", "devices:enrollment_tokens"]
    positions = [tabs.index(f'href="{reverse(name)}"') for name in wanted]
    assert positions == sorted(positions)
    assert as_user(finance_a).get(reverse("portal:settings")).status_code == 403


def test_the_device_page_offers_what_other_apps_add_only_to_those_who_may_use_it(as_user, admin_a, technician):
    from tests.factories import make_contract

    contract = make_contract(admin_a.organisation, number="DLG-5")
    url = reverse("devices:detail", args=[contract.device_id])
    contracts_link = f'href="{reverse("payments:contracts")}?device={contract.device_id}"'
    assert contracts_link in as_user(admin_a).get(url).content.decode()
    technician_page = as_user(technician).get(url)
    assert technician_page.status_code == 200  # a technician looks phones up, and never sees money
    assert contracts_link not in technician_page.content.decode()
