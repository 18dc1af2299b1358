"""The people's side in a real browser (Playwright driving Debian's chromium), as users walk it.

Each story saves screenshots under var/screenshots/. The phone is the reference agent
talking HTTP to the live server: what the portal does reaches it as a real phone would see it.
"""

from __future__ import annotations

import datetime as dt

import phonenumbers
import pytest

from devices.agent import Agent
from devices.agent.client import HttpTransport
from devices.models import Device, DeviceCommand
from devices.services.tokens import enrollment_token_create
from payments.locks.services import lock_sweep
from payments.models import LockPolicy, PaymentChannel
from tests.conftest import browser_sign_in, shot
from tests.factories import make_contract

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def png_receipt() -> bytes:
    """A real (tiny) PNG: uploads are checked by content."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\xff\xff\xff" * 8 for _ in range(8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def enrolled_overdue_phone(live_server, tmp_path, provider_a):
    """A Dialog contract two installments overdue and its phone enrolled (reference agent), not locked yet."""
    LockPolicy.objects.update_or_create(
        provider=provider_a, defaults={"lock_start_hour": 0, "lock_end_hour": 24, "lock_weekdays": list(range(7))}
    )
    PaymentChannel.objects.create(
        provider=provider_a, kind="mobile_money", name="eZ Cash", account="#111#", reference="{contract}"
    )
    contract = make_contract(provider_a, number="DLG-000131", first_due_date=provider_a.today() - dt.timedelta(days=40))
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=None)
    phone = Agent(tmp_path / "phone", transport=HttpTransport(timeout=10))
    assert phone.enroll(live_server.url, contract.device.imei, secret).accepted
    return contract, phone


@pytest.fixture
def overdue_phone(live_server, tmp_path, provider_a):
    """The same, locked by the sweep."""
    contract, phone = enrolled_overdue_phone(live_server, tmp_path, provider_a)
    lock_sweep()
    phone.checkin()
    assert phone.view().state == "locked"
    return contract, phone


def test_an_agent_finds_a_locked_phone_by_a_local_number_records_a_payment_from_proof_and_finance_confirms_it(
    browser, live_server, overdue_phone, agent_a, finance_a, request, tmp_path
):
    """A receipt alone is provisional: the oldest installment at once, the rest when a second person confirms."""
    contract, phone = overdue_phone
    local_number = phonenumbers.format_number(
        phonenumbers.parse(str(contract.customer.phone)), phonenumbers.PhoneNumberFormat.NATIONAL
    )  # "077 123 4567": as the customer says it on the phone
    receipt = tmp_path / "receipt.png"
    receipt.write_bytes(png_receipt())
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    browser_sign_in(page, live_server.url, agent_a)
    page.goto(f"{live_server.url}/console/")
    page.wait_for_function("document.activeElement && document.activeElement.name === 'q'")  # focus is in the box
    page.fill("input[name=q]", local_number)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/console/devices/{contract.device_id}/")
    assert contract.number in page.content()
    shot(page, request, "1-found-by-phone")

    page.get_by_role("link", name="Verify a payment").click()
    page.fill("input[name=transaction_id]", "EZ2026-778812")
    page.get_by_role("button", name="Look up").click()
    page.select_option("select[name=channel]", "mobile_money")
    page.fill("input[name=amount]", "16666.66")  # the two overdue installments
    page.fill("input[name=received_at]", dt.datetime.now(contract.provider.zone).strftime("%Y-%m-%dT%H:%M"))
    page.set_input_files("input[name=receipt]", str(receipt))
    assert "provisional" in page.content()  # the form says what a receipt alone credits
    shot(page, request, "2-recording-from-proof")
    page.get_by_role("button", name="Record from the receipt").click()
    page.wait_for_load_state()
    assert "8,333.33 held until a second person" in page.content()
    shot(page, request, "3-recorded-provisional")

    # The oldest installment is credited at once; the second is still overdue, so the phone stays locked.
    phone.checkin()
    assert phone.view().state == "locked"
    page.goto(f"{live_server.url}/console/devices/{contract.device_id}/")
    assert "is <strong>provisional</strong>" in page.content()
    page.get_by_role("link", name="EZ2026-778812").first.click()
    assert "You cannot confirm this payment." in page.content()  # four eyes: not the agent who recorded it
    shot(page, request, "4-agent-cannot-confirm")

    finance = browser.new_page(viewport={"width": 1280, "height": 900})
    browser_sign_in(finance, live_server.url, finance_a)
    finance.goto(f"{live_server.url}/contracts/payments/?status=provisional")
    finance.get_by_role("link", name="EZ2026-778812").click()
    shot(finance, request, "5-finance-sees-provisional")
    finance.get_by_role("button", name="Confirm payment EZ2026-778812").click()
    finance.wait_for_load_state()
    assert "the phone is now unlocked" in finance.content()
    shot(finance, request, "6-confirmed")

    # The phone's next check-in brings the unlock; it applies and acknowledges it.
    phone.checkin()
    assert phone.view().state == "unlocked"
    assert Device.objects.get(pk=contract.device_id).reported_state == "unlocked"

    page.goto(f"{live_server.url}/console/devices/{contract.device_id}/")
    content = page.content()
    assert "EZ2026-778812" in content and "is <strong>provisional</strong>" not in content
    assert "unlocked" in content.lower()
    shot(page, request, "7-unlocked")
    page.close()
    finance.close()


def test_an_agent_alone_cannot_unlock_a_phone_with_an_invented_receipt_of_69_bytes(
    browser, live_server, overdue_phone, agent_a, request, tmp_path
):
    """The security review's attack in the browser: an invented transaction id, a 69-byte "image", a million."""
    contract, phone = overdue_phone
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 53)  # 69 bytes
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    browser_sign_in(page, live_server.url, agent_a)
    for txid in ("MADE-UP-0001", "MADE-UP-0002"):
        page.goto(f"{live_server.url}/contracts/{contract.pk}/verify-payment/?transaction_id={txid}")
        page.select_option("select[name=channel]", "mobile_money")
        page.fill("input[name=amount]", "1000000.00")
        page.fill("input[name=received_at]", dt.datetime.now(contract.provider.zone).strftime("%Y-%m-%dT%H:%M"))
        page.set_input_files("input[name=receipt]", str(tiny))
        page.get_by_role("button", name="Record from the receipt").click()
        page.wait_for_load_state()
    shot(page, request, "1-two-invented-receipts")
    page.goto(f"{live_server.url}/console/devices/{contract.device_id}/")
    page.get_by_role("link", name="MADE-UP-0001").first.click()
    assert "You cannot confirm this payment." in page.content()
    shot(page, request, "2-cannot-confirm-own")

    phone.checkin()
    assert phone.view().state == "locked"  # 8,333.33 credited, 8,333.33 still overdue
    paid = sum(i.amount_paid for i in contract.installments.all())
    assert str(paid) == "8333.33"
    page.close()


def test_a_technician_requests_a_temporary_unlock_a_second_user_approves_and_it_locks_again_at_expiry(
    browser, live_server, overdue_phone, technician, admin_a, request
):
    contract, phone = overdue_phone
    device_id = contract.device_id

    tech = browser.new_page(viewport={"width": 390, "height": 844})  # at the counter, on a phone
    browser_sign_in(tech, live_server.url, technician)
    tech.goto(f"{live_server.url}/support/unlocks/new/?device={device_id}")
    content = tech.content()
    assert "16,666.66" not in content and contract.customer.name not in content  # no finances, no identity
    tech.check("input[name=kind][value=temporary]")
    tech.fill("input[name=hours]", "2")
    tech.fill("textarea[name=reason]", "Owner shows the shop receipt; needs the phone for a hospital call")
    shot(tech, request, "1-technician-request")
    tech.get_by_role("button", name="Send for approval").click()
    tech.wait_for_load_state()
    shot(tech, request, "2-waiting")
    tech.close()

    admin = browser.new_page(viewport={"width": 1280, "height": 900})
    browser_sign_in(admin, live_server.url, admin_a)
    from support.models import UnlockRequest

    pending = UnlockRequest.objects.get(device_id=device_id)
    admin.goto(f"{live_server.url}/support/unlocks/")
    admin.get_by_role("link", name=f"#{pending.pk}").click()
    shot(admin, request, "3-approver")
    admin.get_by_role("button", name="Approve and apply now").click()
    admin.wait_for_load_state()
    shot(admin, request, "4-approved")
    admin.close()

    phone.checkin()
    assert phone.view().state == "temp_unlocked"

    # Two hours later the sweep finds the override over: locked again at the next check-in.
    from payments.models import LockOverride

    ends_at = LockOverride.objects.get(contract=contract).ends_at
    lock_sweep(now=ends_at + dt.timedelta(minutes=5))
    phone.checkin()
    assert phone.view().state == "locked"


def test_an_admin_edits_the_hotline_text_and_both_the_preview_and_the_next_lock_show_it(
    browser, live_server, tmp_path, provider_a, admin_a, request
):
    contract, phone = enrolled_overdue_phone(live_server, tmp_path, provider_a)
    hotline = "Call 0117 100 100 (8am to 8pm, every day) before the lock starts"
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    browser_sign_in(page, live_server.url, admin_a)

    page.goto(f"{live_server.url}/locks/screen/en/")
    page.fill("textarea[name=body]", hotline)
    page.get_by_role("button", name="Preview").click()
    frame = page.wait_for_selector("iframe.phone-screen").content_frame()
    frame.wait_for_selector("#emergency-call")
    assert hotline in frame.inner_text("body")  # the unsaved text, drawn by the reference agent's page
    shot(page, request, "1-preview")
    page.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    frame = page.wait_for_selector("iframe.phone-screen").content_frame()
    frame.wait_for_selector("#emergency-call")
    assert hotline in frame.inner_text("body")
    shot(page, request, "2-saved")
    page.close()

    # The next lock command carries it: the phone shows the very same words.
    lock_sweep()
    phone.checkin()
    assert phone.view().state == "locked"
    assert hotline in phone.render_html()  # the phone's 360x800 page (the terminal view wraps lines)
    latest = DeviceCommand.objects.filter(device_id=contract.device_id).latest("seq")
    assert latest.state == "locked" and hotline in latest.payload["screen"]["body"]


def test_an_admin_who_makes_an_agent_account_cannot_approve_its_release_request(
    browser, live_server, overdue_phone, admin_a, request
):
    """The security review's attack: one person, two accounts, one browser — refused, with the reason."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from payments.models import Contract
    from support.models import UnlockRequest

    contract, phone = overdue_phone
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    # The admin adds an agent on the staff page and keeps its one-time set-password link.
    browser_sign_in(page, live_server.url, admin_a)
    page.goto(f"{live_server.url}/settings/staff/new/")
    page.fill("input[name=username]", "a.puppet")
    page.select_option("select[name=role]", "agent")
    page.get_by_role("button", name="Add staff member").click()
    link = page.inner_text("#set-password-link")
    shot(page, request, "1-agent-created")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login/**")

    # ...opens it, chooses the agent's password and signs in as the agent...
    page.goto(link)
    page.wait_for_selector("input[name=new_password1]")
    page.fill("input[name=new_password1]", "puppet-passphrase-2026")
    page.fill("input[name=new_password2]", "puppet-passphrase-2026")
    page.get_by_role("button", name="Set password").click()
    page.wait_for_url("**/login/**")
    page.fill("input[name=username]", "a.puppet")
    page.fill("input[name=password]", "puppet-passphrase-2026")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()

    # ...asks for a release of the defaulted phone...
    page.goto(f"{live_server.url}/support/unlocks/new/?device={contract.device_id}")
    page.check("input[name=kind][value=release]")
    page.fill("textarea[name=reason]", "Customer paid everything in cash at the branch")
    page.get_by_role("button", name="Send for approval").click()
    page.wait_for_load_state()
    pending = UnlockRequest.objects.get(device_id=contract.device_id)
    assert pending.requested_by.username == "a.puppet" and pending.status == "pending"
    shot(page, request, "2-release-requested")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login/**")

    # ...and signs back in as admin to approve it: refused, with the reason, before and after clicking.
    TOTPDevice.objects.filter(user=admin_a).update(last_t=-1)  # the authenticator shows a fresh code
    browser_sign_in(page, live_server.url, admin_a)
    page.goto(f"{live_server.url}/support/unlocks/{pending.pk}/")
    notice = page.inner_text("#four-eyes")
    assert "You cannot approve this request." in notice and "you created a.puppet on" in notice
    assert page.get_by_role("button", name="Approve and apply now").count() == 0
    shot(page, request, "3-approver-told-why")
    # An attacker posts the approval anyway (the form still points at it): refused, nothing changes.
    with page.expect_navigation():
        page.evaluate("document.querySelector('form[action$=\"/approve/\"]').submit()")
    assert "You set up the account of a.puppet" in page.inner_text("main")
    shot(page, request, "4-approval-refused")
    page.close()

    assert UnlockRequest.objects.get(pk=pending.pk).status == "pending"
    assert Contract.objects.get(pk=contract.pk).lock_state == "locked"
    phone.checkin()
    assert phone.view().state == "locked"  # nothing released
