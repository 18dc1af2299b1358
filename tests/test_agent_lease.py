"""Offline leases on the reference agent: a phone out of contact warns, then reminds or locks.

docs/lock-pipeline.md, "Offline lease". The phone keeps trusted time from the command's
``issued_at`` and its monotonic clock, never its wall clock: setting the date back or
forward changes nothing, a reboot carries trusted time on from the last checkpoint, a lock
only starts inside the provider's lock window (local time in the command's zone), and an
offline code typed from the hotline extends the lease from the moment it is entered.
Each test plays the server with ``Provider`` and moves the phone's clocks by hand.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from openpaygo import TokenType

from devices.agent.render import WIDTH, ScreenView, render_html, render_text
from tests.test_agent import START, Clock, FakeTransport, Provider, agent_at, lock_screen, offline_code, reads, wire

DAY = dt.timedelta(days=1)
WEEKDAYS_9_TO_5 = {"start_hour": 9, "end_hour": 17, "weekdays": [0, 1, 2, 3, 4]}


def leased(provider: Provider, state: str = "unlocked", *, days: float = 10, **overrides) -> dict:
    """A command with the provider's offline policy: usable ``days`` out of contact, warned 3 days before."""
    lease = {
        "lease_until": wire(provider.clock.now + days * DAY),
        "lease_expiry_state": "locked",
        "lease_warning_days": 3,
        "offline_lock_days": 10,
    }
    return provider.envelope(state, **(lease | overrides))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def provider(clock):
    return Provider(clock=clock)


@pytest.fixture
def phone(tmp_path, provider, clock):
    agent = agent_at(tmp_path / "phone", clock, transport=FakeTransport())
    provider.enrol(agent)
    return agent


def shows(agent) -> tuple[str, bool]:
    agent.tick()
    return agent.state.state, agent.state.warning


def test_out_of_contact_the_phone_warns_then_locks_and_the_wall_clock_changes_nothing(phone, provider, clock):
    assert phone.handle_envelope(leased(provider)).accepted  # lease until 3 Dec 09:00 UTC

    clock.advance(days=1)
    clock.set_wall_clock(START + 365 * DAY)  # a year ahead: the lease does not end early
    assert shows(phone) == ("unlocked", False)

    clock.advance(days=6)  # 3 days before the lease ends
    assert shows(phone) == ("unlocked", True)
    assert "This phone will be locked from 2026-12-03 14:30 (UTC+05:30)" in reads(phone)
    assert phone.log[-1]["event"] == "lease_warning"

    clock.set_wall_clock(START - 30 * DAY)  # the owner sets the date back a month
    clock.advance(days=3)
    assert shows(phone) == ("locked", False)
    assert phone.log[-1]["event"] == "lease_expired"
    assert "has not heard from the server since 2026-11-23 14:30 (UTC+05:30)" in reads(phone)

    # The next contact renews the lease: a fresh command, unlocked again. The server's clock was
    # never wrong (only the phone's was set back): its command is issued 10 days after the first.
    clock.set_wall_clock(START + 10 * DAY)
    assert phone.handle_envelope(leased(provider)).accepted
    assert shows(phone) == ("unlocked", False)


def test_a_lease_lock_waits_for_the_lock_window_in_the_owners_time_zone(phone, provider, clock):
    # The lease ends at 02:00 on Sunday in Colombo; locks may start Monday to Friday, 09:00-17:00.
    sunday_2am = dt.datetime(2026, 11, 28, 20, 30, tzinfo=dt.UTC)
    command = leased(provider, lease_until=wire(sunday_2am), lease_warning_days=2, lock_window=WEEKDAYS_9_TO_5)
    phone.handle_envelope(command)

    clock.advance(seconds=(sunday_2am - START).total_seconds() + 60)
    assert shows(phone) == ("reminder", True)  # usable, warned of the lock to come
    assert "locked from 2026-11-30 09:00 (UTC+05:30)" in reads(phone)

    clock.advance(seconds=(dt.datetime(2026, 11, 30, 3, 29, tzinfo=dt.UTC) - clock.now).total_seconds())
    assert shows(phone) == ("reminder", True)
    clock.advance(minutes=1)  # Monday 09:00 in Colombo
    assert shows(phone) == ("locked", False)

    clock.advance(hours=9)  # 18:00: outside the window, but a lock that started stays
    assert shows(phone) == ("locked", False)
    assert phone.phone.lease_locked


def test_a_lease_that_ends_in_a_reminder_never_locks(phone, provider, clock):
    """A disputed contract: out of contact the phone reminds, and stays usable."""
    phone.handle_envelope(leased(provider, lease_expiry_state="reminder"))

    clock.advance(days=7)
    assert shows(phone) == ("unlocked", True)
    assert "From 2026-12-03 14:30 (UTC+05:30) this phone will show a payment reminder" in reads(phone)
    clock.advance(days=30)
    assert shows(phone) == ("reminder", False)
    assert "has not heard from the server since" in reads(phone)


def test_an_offline_code_extends_the_lease_from_the_moment_it_is_entered(phone, provider, clock):
    phone.handle_envelope(leased(provider))  # lease until 3 Dec
    clock.advance(days=9)
    assert shows(phone) == ("unlocked", True)

    _count, token = offline_code(count=0, days=5, token_type=TokenType.SET_TIME)
    assert phone.enter_code(token).ok  # entered on 2 Dec 09:00: usable until 7 Dec 09:00

    assert shows(phone) == ("unlocked", False)
    assert phone.view().offline_unlock
    clock.advance(days=4, hours=23)
    assert shows(phone) == ("unlocked", False)
    clock.advance(hours=1)  # the code's days are over, and so is the lease (max of both)
    assert shows(phone) == ("locked", False)

    # A code typed on a phone locked by its lease lifts the lock for its days.
    count, token = offline_code(count=1, days=2, token_type=TokenType.SET_TIME)
    assert phone.enter_code(token).ok
    assert shows(phone)[0] == "unlocked" and not phone.phone.lease_locked


def test_a_reboot_keeps_trusted_time_and_time_switched_off_does_not_count(tmp_path, provider, clock):
    agent = agent_at(tmp_path / "phone", clock)
    provider.enrol(agent)
    agent.handle_envelope(leased(provider))
    clock.advance(days=2)
    agent.tick()  # checkpoints trusted time to protected storage (at least hourly)

    clock.reboot(days=5)  # off for five days; the wall clock moved on, the monotonic clock restarted
    rebooted = agent_at(tmp_path / "phone", clock)

    assert rebooted.phone.trusted_now(clock.monotonic()) == START + 2 * DAY
    assert shows(rebooted) == ("unlocked", False)
    clock.advance(days=5)
    assert shows(rebooted) == ("unlocked", True)
    clock.advance(days=3)
    assert shows(rebooted) == ("locked", False)


def test_replaying_the_command_in_force_does_not_turn_trusted_time_back(phone, provider, clock):
    command = leased(provider)
    phone.handle_envelope(command)
    clock.advance(days=8)

    assert phone.handle_envelope(command, source="mqtt").verdict == "same"  # a replay, or retained MQTT

    assert shows(phone) == ("unlocked", True)  # still 2 days to go, not 10
    assert phone.phone.trusted_now(clock.monotonic()) == START + 8 * DAY


def test_the_lease_warning_says_what_when_and_how_to_avoid_it_on_the_360x800_screen():
    colombo_lock = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)
    view = ScreenView(
        state="unlocked",
        screen=lock_screen(),
        warning=True,
        warning_state="locked",
        warning_at=colombo_lock,
        time_zone="Asia/Colombo",
    )

    text, page = render_text(view), render_html(view)

    said = reads(text)
    assert "This phone will be locked from 2026-12-03 14:30 (UTC+05:30) unless it hears from the server" in said
    assert "connect to the internet so the phone checks in, pay via a payment channel, or call the hotline" in said
    assert "Pay: eZ Cash, account #111#, DLG-2026-000417" in said
    assert "Hotline: +94777575727" in said
    assert all(len(line) == WIDTH for line in text.splitlines())
    assert '<meta name="viewport" content="width=360">' in page and "width:360px;height:800px" in page
    warning = re.search(r'<div class="notice" id="lease-warning" role="alert">(.*?)</div>', page).group(1)
    assert "2026-12-03 14:30 (UTC+05:30)" in warning and "call the hotline" in warning
    assert 'id="emergency-call"' in page

    nairobi = render_text(ScreenView(**{**view.__dict__, "time_zone": "Africa/Nairobi", "warning_state": "reminder"}))
    assert "From 2026-12-03 12:00 (UTC+03:00) this phone will show a payment reminder" in reads(nairobi)


def test_a_warning_in_the_owners_language_falls_back_to_english_only_where_untranslated():
    labels = {"lease_warning_lock": "Simu hii itafungwa kuanzia {when} isipowasiliana na seva kabla ya hapo."}
    view = ScreenView(
        state="reminder",
        screen=lock_screen(language="sw", labels=labels),
        warning=True,
        warning_state="locked",
        warning_at=dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC),
        time_zone="Africa/Nairobi",
    )

    said = reads(render_text(view))

    assert "Simu hii itafungwa kuanzia 2026-12-03 12:00 (UTC+03:00)" in said
    assert "To avoid it: connect to the internet" in said  # no translation sent: the built-in English
