"""The words around the values on the phone ("Amount overdue", "How to pay", ...) are in the owner's language.

The server sends them as ``screen.labels`` in the language it chose for the texts; the
reference agent shows them, escaped, and falls back to its built-in English for any label
missing or unusable, so an older server's screen reads exactly as before.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from devices.agent import Agent
from devices.agent import screen as agent_render
from devices.agent.render import ScreenView, render_html, render_text
from devices.keys import key_statements
from devices.models import DeviceCommand
from payments.locks import screen as lockscreen
from payments.locks.services import lock_sweep
from payments.models import PaymentChannel
from tests.factories import CustomerFactory, make_contract
from tests.test_agent import lock_screen

# Tuesday 17 Feb 2026, 10:00 in Colombo and 10:30 in Nairobi: the 15 Jan installment is late.
COLOMBO_MORNING = dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC)
NAIROBI_MORNING = dt.datetime(2026, 2, 17, 7, 30, tzinfo=dt.UTC)

SI_AMOUNT_OVERDUE = "ප්\u200dරමාද වූ මුදල"
SI_EMERGENCY_CALL = "හදිසි ඇමතුම"
SI_HOW_TO_PAY = "ගෙවන ආකාරය"
SW_AMOUNT_OVERDUE = "Kiasi kilichochelewa"
SW_EMERGENCY_CALL = "Simu ya dharura"
SW_HOW_TO_PAY = "Jinsi ya kulipa"


def flat(text_screen: str) -> str:
    """The terminal box's words on one line (a label may wrap across lines of the box)."""
    return " ".join(line[1:-1].strip() for line in text_screen.splitlines()[1:-1] if line.startswith("│"))


def phone_shows(command: DeviceCommand, tmp_path) -> Agent:
    """The reference agent, enrolled with the server's key statement, after the server's signed command."""
    payload = command.payload
    phone = Agent(tmp_path / "phone")
    phone.install_enrolment(
        device=payload["device"], imei=payload["imeis"][0], imeis=payload["imeis"], key_statements=key_statements()
    )
    assert phone.handle_envelope(command.envelope).accepted
    return phone


# --- one table, two copies -----------------------------------------------------------------


def test_the_server_and_the_agent_have_the_same_labels_in_the_same_english():
    assert lockscreen.LABELS == agent_render.LABELS
    assert list(lockscreen.LABELS) == list(agent_render.LABELS)


@pytest.mark.parametrize("language", ["si", "sw"])
def test_every_label_is_translated_with_its_placeholders(language):
    labels = lockscreen.labels_in(language)
    assert set(labels) == set(lockscreen.LABELS)
    untranslated = [key for key, text in labels.items() if text == lockscreen.LABELS[key]]
    assert untranslated == []
    for key, text in labels.items():
        english = lockscreen.LABELS[key]
        assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", english)), key


def test_a_language_without_a_catalogue_gets_the_english_labels():
    assert lockscreen.labels_in("ta") == lockscreen.LABELS
    assert lockscreen.labels_in("en") == lockscreen.LABELS


# --- from the sweep to the phone -----------------------------------------------------------


def test_a_sinhala_owner_reads_the_whole_lock_screen_in_sinhala(provider_a, platform, tmp_path):
    PaymentChannel.objects.create(
        provider=provider_a, kind="mobile_money", name="eZ Cash", account="#111#", reference="{contract}"
    )
    contract = make_contract(
        provider_a, number="DLG-SI", customer=CustomerFactory(provider=provider_a, preferred_language="si")
    )
    lock_sweep(now=COLOMBO_MORNING)
    command = DeviceCommand.objects.get(device=contract.device)
    screen = command.payload["screen"]
    assert screen["language"] == "si"
    assert screen["labels"] == lockscreen.labels_in("si")
    assert screen["labels"]["amount_overdue"] == SI_AMOUNT_OVERDUE

    phone = phone_shows(command, tmp_path)
    page = phone.render_html()
    assert '<html lang="si">' in page
    assert f'<div class="label">{SI_AMOUNT_OVERDUE}</div>' in page
    assert f"<h2>{SI_HOW_TO_PAY}</h2>" in page
    assert f'href="tel:112">{SI_EMERGENCY_CALL}</a>' in page
    assert "ජංගම මුදල්" in page  # the channel's kind, mobile_money
    for english in ("Amount overdue", "How to pay", "Locked by", "Emergency call", "Your data", "mobile money"):
        assert english not in page
    text = flat(phone.render_text())
    assert f"{SI_AMOUNT_OVERDUE}: LKR" in text
    assert f"[ {SI_EMERGENCY_CALL} 112 ]" in text
    assert "Amount overdue" not in text and "Locked by" not in text


def test_a_swahili_owner_reads_the_whole_lock_screen_in_swahili(provider_b, platform, tmp_path):
    PaymentChannel.objects.create(
        provider=provider_b, kind="mobile_money", name="M-Pesa", account="522522", reference="{contract}"
    )
    contract = make_contract(provider_b, customer=CustomerFactory(provider=provider_b, preferred_language="sw"))
    lock_sweep(now=NAIROBI_MORNING)
    command = DeviceCommand.objects.get(device=contract.device)
    screen = command.payload["screen"]
    assert screen["language"] == "sw"
    assert screen["labels"] == lockscreen.labels_in("sw")

    phone = phone_shows(command, tmp_path)
    page = phone.render_html()
    assert f'<div class="label">{SW_AMOUNT_OVERDUE}</div>' in page
    assert f"<h2>{SW_HOW_TO_PAY}</h2>" in page
    assert f'href="tel:112">{SW_EMERGENCY_CALL}</a>' in page
    assert "Amount overdue" not in page and "Emergency call" not in page
    text = flat(phone.render_text())
    assert f"{SW_AMOUNT_OVERDUE}: KES" in text and "IMEFUNGWA" in text
    assert f"[ {SW_EMERGENCY_CALL} 112 ]" in text


def test_an_english_owner_gets_english_labels_and_the_screen_an_old_server_would_give(provider_a, platform):
    contract = make_contract(provider_a, customer=CustomerFactory(provider=provider_a, preferred_language="en"))
    lock_sweep(now=COLOMBO_MORNING)
    payload = DeviceCommand.objects.get(device=contract.device).payload
    screen = payload["screen"]
    assert screen["language"] == "en" and screen["labels"] == agent_render.LABELS
    old_server = {key: value for key, value in screen.items() if key != "labels"}
    for state in ("locked", "reminder", "temp_unlocked", "released"):
        new = ScreenView(state=state, screen=screen, allowed_numbers=payload["allowed_numbers"])
        old = ScreenView(state=state, screen=old_server, allowed_numbers=payload["allowed_numbers"])
        assert render_html(new) == render_html(old) and render_text(new) == render_text(old)


def test_the_admins_preview_shows_the_labels_of_the_language_previewed(as_user, admin_a):
    page = as_user(admin_a).get("/locks/screen/si/preview/").content.decode()
    assert SI_AMOUNT_OVERDUE in page and SI_EMERGENCY_CALL in page


# --- the agent with labels from anywhere --------------------------------------------------


def test_without_labels_the_agent_shows_its_built_in_english():
    page = render_html(ScreenView(state="locked", screen=lock_screen()))
    assert '<div class="label">Amount overdue</div>' in page and ">Emergency call</a>" in page
    assert "[ Emergency call 112 ]" in render_text(ScreenView(state="locked", screen=lock_screen()))


def test_a_label_from_the_server_is_escaped_in_the_html():
    screen = lock_screen(
        labels={
            "amount_overdue": "<script>alert(1)</script>",
            "emergency_call": 'Call" onclick="x',
            "cannot_reach": "<b>{provider}</b>?",
        },
        provider={"name": "<i>Evil</i>"},
    )
    page = render_html(ScreenView(state="locked", screen=screen))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'onclick="x' not in page and "Call&quot; onclick=&quot;x" in page
    assert "<h2>&lt;b&gt;&lt;i&gt;Evil&lt;/i&gt;&lt;/b&gt;?</h2>" in page
    assert "<b>" not in page and "<i>" not in page


def test_unusable_labels_fall_back_to_english_and_usable_ones_are_cleaned():
    screen = lock_screen(
        labels={
            "amount_overdue": "",  # empty
            "locked_by": 7,  # not a string
            "overdue_since": None,
            "unlocked_until": "Open {how}.",  # a placeholder lost: the time would be missing
            "unlocked_how": "Open {how} {evil}.",  # a placeholder the agent does not know
            "contract": "Mka\x00ta\x1bba\n\tX",  # control characters
            "how_to_pay": "x" * 1000,  # far too long
            "no_such_label": "ignored",
        }
    )
    locked = render_html(ScreenView(state="locked", screen=screen))
    assert '<div class="label">Amount overdue</div>' in locked
    assert '<span class="label">Overdue since</span>' in locked and '<span class="label">Locked by</span>' in locked
    assert f"<h2>{'x' * agent_render.LABEL_MAX_CHARS}</h2>" in locked
    text = render_text(ScreenView(state="locked", screen=screen))
    assert "Mkataba X: DLG-2026-000417" in flat(text)
    until = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
    unlocked = render_html(ScreenView(state="temp_unlocked", screen=screen, expires_at=until))
    assert "Unlocked by your provider until 2026-11-24 09:00 UTC." in unlocked
    no_expiry = render_html(ScreenView(state="temp_unlocked", screen=screen))
    assert "Unlocked by your provider." in no_expiry
    for labels in ("not a dict", ["amount_overdue"], None, 3):
        page = render_html(ScreenView(state="locked", screen=lock_screen(labels=labels)))
        assert '<div class="label">Amount overdue</div>' in page


def test_placeholders_are_filled_in_the_owners_word_order_and_only_once():
    si = lockscreen.labels_in("si")
    until = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
    view = ScreenView(state="temp_unlocked", screen=lock_screen(labels=si), expires_at=until, offline_unlock=True)
    assert "2026-11-24 09:00 UTC දක්වා නොබැඳි (offline) කේතයකින් අගුළු හැර ඇත." in render_html(view)
    # A provider name that looks like a placeholder is shown as it is, not filled again.
    screen = lock_screen(provider={"name": "{provider} Ltd"})
    assert "<h2>Cannot reach {provider} Ltd?</h2>" in render_html(ScreenView(state="locked", screen=screen))


def test_the_protocol_document_lists_every_label():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "lock-pipeline.md").read_text()
    for key, english in agent_render.LABELS.items():
        assert f"| `{key}` | {english} |" in doc, key
