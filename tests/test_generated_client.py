"""An integrator and a device maker each generate a Python client from our OpenAPI documents and use it.

Stories (against a live server, with openapi-python-client, pinned in requirements.txt; no network):
* both documents (``/api/schema/`` and ``/api/device/v1/schema/``) generate without a warning and
  the generated packages import;
* a provider's system registers a phone, sells it on a contract and, when the phone is locked for
  arrears, posts the payment: all through the generated provider client;
* the phone enrols (a challenge signed with its device key), checks in and acknowledges through the
  generated device client; it verifies every envelope with the keys of the signed key statement,
  then parses the decoded payload with the generated ``Command`` and ``KeyStatement`` models;
* the lock and the unlock reach the phone, and its acknowledgements reach the provider's device list.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.utils import timezone

from devices.protocol import (
    KIND_KEY_STATEMENT,
    b64,
    check_command,
    check_key_statement,
    enrollment_message,
    open_envelope,
    unb64,
)
from devices.services.tokens import enrollment_token_create
from payments.locks.services import lock_sweep
from payments.models import LockPolicy
from portal.services import api_key_create
from tests.factories import make_imei

pytestmark = pytest.mark.django_db(transaction=True)

PACKAGES = {"provider": "finlock_provider_client", "device": "finlock_device_client"}


def generate(base_url: str, document_path: str, package: str, where: Path) -> ModuleType:
    """Run the generator on the live server's document, as an integrator would, and import the result."""
    document = requests.get(f"{base_url}{document_path}?format=json", timeout=30)
    document.raise_for_status()
    (where / "openapi.json").write_bytes(document.content)
    config = {"project_name_override": package, "package_name_override": package, "post_hooks": []}
    (where / "config.json").write_text(json.dumps(config))
    run = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--fail-on-warning"]
        + ["--path", str(where / "openapi.json"), "--config", str(where / "config.json")]
        + ["--output-path", str(where / package), "--meta", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
    return importlib.import_module(package)


@pytest.fixture
def clients(live_server, tmp_path, monkeypatch):
    """The two generated packages, importable for this test only, and an ExitStack closing their clients.

    A generated client keeps its HTTP connection alive; the live server's thread serving it
    holds a database connection until it is closed, which PostgreSQL's teardown would wait for.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = {
        "provider": generate(live_server.url, "/api/schema/", PACKAGES["provider"], tmp_path),
        "device": generate(live_server.url, "/api/device/v1/schema/", PACKAGES["device"], tmp_path),
    }
    with ExitStack() as opened:
        yield modules, opened
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES.values():
            del sys.modules[name]


def module(package: ModuleType, name: str) -> ModuleType:
    return importlib.import_module(f"{package.__name__}.{name}")


class Phone:
    """A phone talking to the server only through the generated device client."""

    def __init__(self, client_package: ModuleType, base_url: str, imei: str, opened: ExitStack):
        self.pkg, self.base_url, self.imei, self.opened = client_package, base_url, imei, opened
        self.models = module(client_package, "models")
        self.key = Ed25519PrivateKey.generate()
        self.trusted: dict[str, str] = {}
        self.seq = 0  # of the key statement the phone holds
        self.client = None

    def call(self, operation: str, **kwargs):
        api = module(self.pkg, f"api.device.{operation}")
        response = api.sync_detailed(client=self.client, **kwargs)
        assert response.status_code < 300, (operation, response.status_code, response.content)
        return response.parsed

    def enrol(self, token: str):
        self.client = self.opened.enter_context(
            self.pkg.Client(base_url=self.base_url, raise_on_unexpected_status=True)
        )
        challenge = self.call("device_enroll_challenge").challenge
        device_key = b64(self.key.public_key().public_bytes_raw())
        message = enrollment_message(challenge=challenge, imei=self.imei, device_key=device_key)
        body = self.models.EnrollRequest(
            imei=self.imei,
            enrollment_token=token,
            device_key=device_key,
            challenge=challenge,
            signature=b64(self.key.sign(message)),
            app_version="generated-1.0",
        )
        answer = self.call("device_enroll", body=body)
        # A new phone (no trusted set, no pinned keys) takes the oldest statement of the chain that
        # verifies with one of the keys it names itself, then the rest in order.
        self.trusted = self.keys_in(answer.key_statements[0])
        self.take_statements(answer.key_statements)
        self.client = self.opened.enter_context(
            self.pkg.AuthenticatedClient(
                base_url=self.base_url, token=answer.credential, prefix="Device", raise_on_unexpected_status=True
            )
        )
        return answer

    def keys_in(self, envelope) -> dict[str, str]:
        """The keys an (as yet unverified) statement names: only to check it is self-consistent."""
        return self.models.KeyStatement.from_dict(json.loads(unb64(envelope.payload))).keys.to_dict()

    def take_statements(self, chain):
        for envelope in chain:
            if json.loads(unb64(envelope.payload))["seq"] <= self.seq:
                continue  # held already: skipped before any check, as the protocol says
            statement = open_envelope(envelope.to_dict(), self.trusted, kind=KIND_KEY_STATEMENT)
            parsed = self.models.KeyStatement.from_dict(statement)
            assert parsed.seq >= 1 and parsed.kind == KIND_KEY_STATEMENT
            self.trusted, self.seq = check_key_statement(statement), parsed.seq

    def command(self, envelope):
        """The verified command of an envelope, parsed by the generated model."""
        payload = check_command(open_envelope(envelope.to_dict(), self.trusted))
        command = self.models.Command.from_dict(payload)
        assert str(command.device) == payload["device"] and self.imei in command.imeis
        return command

    def checkin(self, *, state: str, last_seq: int):
        body = self.models.CheckinRequest(state=self.models.StateEnum(state), last_seq=last_seq)
        answer = self.call("device_checkin", body=body)
        self.take_statements(answer.key_statements)
        return self.command(answer.envelope)

    def ack(self, command) -> bool:
        body = self.models.AckRequest(seq=command.seq, state=self.models.StateEnum(command.state.value))
        return self.call("device_ack", body=body).ok


def test_generated_clients_register_sell_enrol_lock_and_unlock_a_phone(clients, live_server, provider_a):
    (packages, opened) = clients
    provider_pkg, device_pkg = packages["provider"], packages["device"]
    m = module(provider_pkg, "models")
    _key, api_key = api_key_create(provider=provider_a, name="generated client")
    api = opened.enter_context(
        provider_pkg.AuthenticatedClient(base_url=live_server.url, token=api_key, raise_on_unexpected_status=True)
    )
    LockPolicy.objects.create(provider=provider_a, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))

    # The provider registers the phone and sells it on a contract whose first installment is long overdue.
    imei = make_imei()
    device = module(provider_pkg, "api.devices.devices_create").sync(
        client=api, body=m.DeviceCreateRequest(imei=imei, serial_number="GEN-1", maker="Acme", model="A1")
    )
    assert (device.imei, device.desired_state.value) == (imei, "unlocked")
    customer = m.CustomerInputRequest(name="Nimal Perera", phone="077 123 4567", national_id="199012345678")
    first_due = provider_a.today() - dt.timedelta(days=40)
    contract = module(provider_pkg, "api.contracts.contracts_create").sync(
        client=api,
        body=m.ContractCreateRequest(
            number="GEN-2026-1",
            device_imei=imei,
            customer=customer,
            cash_price="60000.00",
            down_payment="10000.00",
            installment_count=7,
            frequency=m.FrequencyEnum.MONTHLY,
            first_due_date=first_due,
        ),
    )
    assert (contract.number, contract.balance, len(contract.schedule)) == ("GEN-2026-1", "50000.00", 7)

    # The phone enrols and applies its first command.
    _token, secret = enrollment_token_create(provider=provider_a, name="generated client", actor=None)
    phone = Phone(device_pkg, live_server.url, imei, opened)
    enrolled = phone.enrol(secret)
    first = phone.command(enrolled.envelope)
    assert (first.state.value, str(enrolled.device)) == ("unlocked", str(first.device))
    assert phone.ack(first) is True

    # The sweep locks it for the arrears; the phone learns it at its next check-in.
    lock_sweep()
    locked = phone.checkin(state="unlocked", last_seq=first.seq)
    assert (locked.state.value, locked.seq > first.seq) == ("locked", True)
    assert locked.lease_until is None and locked.lease_expiry_state is None  # a lock has no lease
    assert phone.ack(locked) is True
    assert module(provider_pkg, "api.devices.devices_retrieve").sync(imei, client=api).reported_state.value == "locked"

    # The provider posts a payment of the two installments due (paying the whole balance would
    # release the phone for good): the phone is unlocked at its next check-in.
    payment = module(provider_pkg, "api.payments.payments_create").sync(
        client=api,
        body=m.PaymentCreateRequest(
            external_id="GEN-TX-1",
            channel=m.ChannelEnum.MOBILE_MONEY,
            amount="14285.70",
            currency="LKR",
            received_at=timezone.now() - dt.timedelta(minutes=5),
            reference="GEN-2026-1",
        ),
    )
    assert (payment.status.value, payment.contract_number) == ("matched", "GEN-2026-1")
    unlocked = phone.checkin(state="locked", last_seq=locked.seq)
    assert (unlocked.state.value, unlocked.seq > locked.seq) == ("unlocked", True)
    assert phone.ack(unlocked) is True
    listed = module(provider_pkg, "api.devices.devices_list").sync(client=api)
    assert [(d.imei, d.reported_state.value) for d in listed.results] == [(imei, "unlocked")]
