"""The demo: `./dev demo` gives a newcomer every situation, one login per role, and nothing twice.

Also the benchmark's row generator, which must produce rows the database accepts.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections import Counter
from decimal import Decimal

import phonenumbers
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from demo import generator
from demo.management.commands.demo import DEMO_USERS, demo_api_keys_path
from demo.management.commands.totp_code import current_code
from devices.models import Device, normalise_imei
from payments.locks.sweep import changed_contract_ids
from payments.models import Contract, Customer, Installment
from portal.audit_verify import audit_verify_chain
from portal.models import ApiKey, AuditEvent, Organisation, User

pytestmark = pytest.mark.django_db

DEVICES = 40
PROVIDER_SLUGS = ("dialog", "jamii")


@pytest.fixture
def run_demo(settings, tmp_path):
    """Run ``manage.py demo --no-serve --devices 40`` as a developer would (DEBUG on)."""
    settings.DEBUG = True
    settings.VAR_DIR = tmp_path  # the demo keeps its API keys there

    def run(*extra: str) -> str:
        out = io.StringIO()
        call_command("demo", "--no-serve", "--devices", str(DEVICES), *extra, stdout=out)
        return out.getvalue()

    return run


@pytest.fixture
def demo(run_demo):
    return run_demo()


def situation_of(contract: Contract, today: dt.date) -> str:
    """Where a contract stands, read from its status and schedule only (not from the generator)."""
    installments = list(contract.installments.all())
    if contract.status != "active":
        return contract.status
    unpaid = [i for i in installments if i.amount_paid < i.amount_due]
    if not unpaid:
        return "paid_up"
    days_late = (today - unpaid[0].due_date).days
    if days_late >= 7:
        return "overdue_past_grace"
    if days_late >= 1:
        return "overdue_grace"
    if days_late >= -3:
        return "due_soon"
    if any(i.due_date <= today for i in installments):
        return "paid_up"
    return "nothing_due_yet"


def sign_in(client, username: str, password: str) -> None:
    """Sign in through the portal's login form, then the TOTP step when the user has one."""
    response = client.post("/login/", {"username": username, "password": password})
    assert response.status_code == 302, f"{username} could not sign in"
    device = TOTPDevice.objects.filter(user__username=username, name="demo", confirmed=True).first()
    if device is not None:
        gate = client.get("/")
        assert gate.status_code == 302 and gate["Location"].startswith("/login/verify/")
        verified = client.post("/login/verify/", {"token": current_code(device), "next": "/"})
        assert verified.status_code == 302 and verified["Location"] == "/", f"{username}: the TOTP code was refused"


# --- the data ---------------------------------------------------------------------


def test_every_situation_exists_for_each_provider(demo):
    for slug in PROVIDER_SLUGS:
        provider = Organisation.objects.get(slug=slug)
        today = provider.today()
        contracts = Contract.objects.filter(provider=provider).prefetch_related("installments")
        situations = Counter(situation_of(c, today) for c in contracts)
        assert set(situations) == {s.value for s in generator.Situation}, f"{slug}: {situations}"
        assert sum(situations.values()) == generator.split_across_providers(DEVICES)[slug]

        past_grace = [c for c in contracts.filter(status="active") if situation_of(c, today) == "overdue_past_grace"]
        assert any(
            (today - next(i for i in c.installments.all() if i.amount_paid < i.amount_due).due_date).days >= 7
            for c in past_grace
        )
        for contract in contracts.filter(status="paid_off"):
            assert all(i.amount_paid == i.amount_due for i in contract.installments.all())


def test_lock_states_follow_the_situations_and_the_sweep_has_nothing_to_change(demo):
    expected = {
        "nothing_due_yet": "unlocked",
        "paid_up": "unlocked",
        "due_soon": "reminder",
        "overdue_grace": "reminder",
        "overdue_past_grace": "locked",
        "defaulted": "locked",
        "paid_off": "released",
        "cancelled": "released",
    }
    for provider in Organisation.objects.filter(slug__in=PROVIDER_SLUGS):
        today = provider.today()
        contracts = Contract.objects.filter(provider=provider).select_related("device").prefetch_related("installments")
        for contract in contracts:
            state = expected[situation_of(contract, today)]
            assert contract.lock_state == contract.device.desired_state == state, contract.number
            assert contract.lock_reason and contract.device.desired_reason
        # The demo agrees with the lock engine: its sweep would send no command now.
        _evaluated, changed = changed_contract_ids(provider, now=timezone.now())
        assert changed == []


def test_every_demo_phone_holds_a_signed_command_for_its_state(demo):
    from devices.keys import public_keys
    from devices.models import Device, DeviceCommand
    from devices.protocol import check_command, open_envelope

    for device in Device.objects.all():
        command = DeviceCommand.objects.filter(device=device).order_by("-seq").first()
        assert command is not None, device.imei
        payload = check_command(open_envelope(command.envelope, public_keys()))
        assert payload["state"] == device.desired_state and payload["device"] == str(device.uid)
        assert payload["imeis"] == [imei for imei in (device.imei, device.imei2) if imei]
        if device.reported_state == device.desired_state:
            assert device.reported_seq == command.seq  # the phone has acknowledged it
    locked = DeviceCommand.objects.filter(state="locked").first()
    assert locked is not None and locked.payload["screen"]["payment_channels"]


def test_every_row_is_valid(demo):
    now = timezone.now()
    for provider in Organisation.objects.filter(slug__in=PROVIDER_SLUGS):
        devices = list(Device.objects.filter(provider=provider))
        imeis = [d.imei for d in devices] + [d.imei2 for d in devices if d.imei2]
        assert len(imeis) == len(set(imeis)), "IMEIs repeat within a provider"
        assert all(normalise_imei(i) == i for i in imeis)
        for customer in Customer.objects.filter(provider=provider):
            number = phonenumbers.parse(str(customer.phone))
            assert phonenumbers.is_valid_number(number)
            assert phonenumbers.region_code_for_number(number) == provider.country
            assert customer.national_id_masked.startswith("•") and customer.national_id_digest
            assert customer.preferred_language in {"en", *provider.languages}
        for contract in Contract.objects.filter(provider=provider).prefetch_related("installments"):
            installments = list(contract.installments.all())
            assert contract.currency == provider.currency
            assert sum(i.amount_due for i in installments) == contract.financed_amount
            assert len(installments) == contract.installment_count
            assert all(Decimal(0) <= i.amount_paid <= i.amount_due for i in installments)
            assert contract.down_payment < contract.cash_price <= contract.financed_amount + contract.down_payment
            assert contract.created_at <= now
    # Every create went through the services, so the audit trail is whole.
    assert audit_verify_chain().ok
    assert AuditEvent.objects.filter(action="contract.create").count() == DEVICES
    assert AuditEvent.objects.filter(action="demo.history").count() == 2


def test_running_the_demo_twice_creates_nothing_new(run_demo):
    first = run_demo()
    models = (Organisation, User, Device, Customer, Contract, Installment, TOTPDevice, ApiKey)
    counts = {m.__name__: m.objects.count() for m in models}
    keys = json.loads(demo_api_keys_path().read_text())

    second = run_demo()

    assert {m.__name__: m.objects.count() for m in models} == counts
    assert json.loads(demo_api_keys_path().read_text()) == keys
    assert "already loaded" in second and "already loaded" not in first
    for key in keys.values():
        assert key in first and key in second  # the same working keys are printed again


def test_the_output_lists_every_login_and_labels_secrets_demo_only(demo):
    for user in DEMO_USERS:
        assert user.username in demo and user.password in demo
    assert "Demo logins (demo only" in demo
    assert "API keys (demo only)" in demo
    assert "./dev totp_code dialog.admin" in demo


# --- signing in as each persona ----------------------------------------------------------


@pytest.mark.parametrize("persona", DEMO_USERS, ids=lambda u: u.username)
def test_each_demo_user_signs_in_and_sees_their_own_organisation(demo, client, persona):
    user = User.objects.get(username=persona.username)
    assert user.role == persona.role and user.organisation.slug == persona.organisation
    assert TOTPDevice.objects.filter(user=user, confirmed=True).exists() == user.requires_2fa

    sign_in(client, persona.username, persona.password)
    home = client.get("/")
    assert home.status_code == 200
    assert user.organisation.name.encode() in home.content
    if user.organisation.is_provider:
        other = Organisation.objects.exclude(pk=user.organisation.pk).get(slug__in=PROVIDER_SLUGS)
        assert other.name.encode() not in home.content


def test_an_agent_lists_only_their_providers_devices(demo, client):
    sign_in(client, "dialog.agent", "demo-agent-2026")
    page = client.get("/devices/")
    assert page.status_code == 200
    dialog_imeis = Device.objects.filter(provider__slug="dialog").values_list("imei", flat=True)
    jamii_imeis = Device.objects.filter(provider__slug="jamii").values_list("imei", flat=True)
    assert any(imei.encode() in page.content for imei in dialog_imeis)
    assert not any(imei.encode() in page.content for imei in jamii_imeis)


def test_a_technician_sees_devices_of_both_served_providers(demo, client):
    sign_in(client, "fixit.tech", "demo-technician-2026")
    page = client.get("/devices/")
    assert page.status_code == 200
    for slug in PROVIDER_SLUGS:
        imeis = Device.objects.filter(provider__slug=slug).values_list("imei", flat=True)
        assert any(imei.encode() in page.content for imei in imeis), f"no {slug} device listed"


def test_each_providers_demo_api_key_works_and_is_scoped(demo):
    keys = json.loads(demo_api_keys_path().read_text())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {keys['jamii']}")
    response = client.get("/api/v1/devices/")
    assert response.status_code == 200
    listed = {row["imei"] for row in response.json()["results"]}
    assert listed and listed <= set(Device.objects.filter(provider__slug="jamii").values_list("imei", flat=True))


# --- development only ------------------------------------------------------------------


def test_totp_code_prints_the_code_the_login_accepts(demo):
    device = TOTPDevice.objects.get(user__username="platform.operator", name="demo")
    before = current_code(device)
    out = io.StringIO()
    call_command("totp_code", "platform.operator", stdout=out, stderr=io.StringIO())
    printed = out.getvalue().strip()
    assert len(printed) == 6 and printed.isdigit()
    assert printed in {before, current_code(device)}  # the 30-second window may turn meanwhile


def test_totp_code_explains_a_user_without_a_demo_authenticator(demo):
    with pytest.raises(CommandError, match="no demo authenticator"):
        call_command("totp_code", "dialog.agent")
    with pytest.raises(CommandError, match="No user"):
        call_command("totp_code", "nobody")


def test_both_commands_refuse_when_debug_is_off(settings, tmp_path):
    settings.DEBUG = False
    settings.VAR_DIR = tmp_path
    with pytest.raises(CommandError, match="i-know-this-is-not-production"):
        call_command("demo", "--no-serve", "--devices", str(DEVICES))
    assert not User.objects.exists()
    with pytest.raises(CommandError, match="DEBUG"):
        call_command("totp_code", "dialog.admin")


def test_the_override_runs_the_demo_with_debug_off(settings, tmp_path):
    settings.DEBUG = False
    settings.VAR_DIR = tmp_path
    call_command("demo", "--no-serve", "--devices", "16", "--i-know-this-is-not-production", stdout=io.StringIO())
    assert Contract.objects.count() == 16


def test_too_few_devices_is_refused_with_the_minimum(run_demo):
    with pytest.raises(CommandError, match=str(generator.MIN_DEVICES)):
        call_command("demo", "--no-serve", "--devices", "5")


# --- the benchmark's rows --------------------------------------------------------------


def test_bench_rows_satisfy_the_database_rules():
    ids = {"device": 1000, "customer": 5000, "contract": 9000}
    batches = list(
        generator.iter_bench_rows(provider_ids={"dialog": 1, "jamii": 2}, contracts=3000, first_ids=ids, batch_size=700)
    )
    assert [len(b) for b in batches] == [700, 700, 700, 700, 200]
    devices = [row for b in batches for row in b.devices]
    contracts = [row for b in batches for row in b.contracts]
    installments = [row for b in batches for row in b.installments]
    assert all(len(r) == len(generator.DEVICE_COLUMNS) for r in devices)
    assert all(len(r) == len(generator.CONTRACT_COLUMNS) for r in contracts)
    assert all(len(r) == len(generator.INSTALLMENT_COLUMNS) for r in installments)

    col = {name: i for i, name in enumerate(generator.CONTRACT_COLUMNS)}
    numbers = [(r[col["provider_id"]], r[col["number"]]) for r in contracts]
    assert len(set(numbers)) == len(numbers) == 3000
    assert all(n.startswith(("DLG-B", "JMI-B")) for _p, n in numbers)
    assert [r[col["id"]] for r in contracts] == list(range(9000, 12000))
    assert {r[col["device_id"]] for r in contracts} == set(range(1000, 4000))  # one contract per device

    imeis = [(r[1], imei) for r in devices for imei in (r[2], r[3]) if imei]
    assert len(set(imeis)) == len(imeis)
    assert all(normalise_imei(imei) == imei for _p, imei in imeis[:2000])

    due = Counter()
    for contract_id, _number, _due_date, amount_due, amount_paid in installments:
        assert amount_due > 0 and Decimal(0) <= amount_paid <= amount_due
        due[contract_id] += amount_due
    assert all(due[r[col["id"]]] == r[col["financed_amount"]] for r in contracts)
    assert 5.5 <= len(installments) / len(contracts) <= 6.5


def test_the_generator_is_deterministic_for_a_seed_and_a_day():
    now = timezone.now()
    first = list(generator.plan_contracts(generator.DIALOG, count=50, now=now, seed=7))
    again = list(generator.plan_contracts(generator.DIALOG, count=50, now=now, seed=7))
    other = list(generator.plan_contracts(generator.DIALOG, count=50, now=now, seed=8))
    assert first == again
    assert [p.imei for p in first] != [p.imei for p in other]


def test_each_providers_finance_queue_has_unmatched_payments_to_work(demo):
    from payments.models import Payment

    for slug in ("dialog", "jamii"):
        assert Payment.objects.filter(provider__slug=slug, status="unmatched").count() >= 3
