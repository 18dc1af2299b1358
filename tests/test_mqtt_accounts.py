"""Phones' MQTT accounts: a phone reads only its own topic, publishes nothing; only finlock publishes.

The broker stories start a second Mosquitto of their own, on a free port, with the shipped
configuration (``deploy/mosquitto/finlock.conf``, only the plugin's file path pointed into
the test's directory) and set it up the way the README says: ``mosquitto_ctrl dynsec init``,
then ``manage.py mqtt_setup``. Each test stops its own broker; the run's shared broker is
never touched. Phones enrol through the real device API; commands are signed and published
by finlock's delivery with finlock's own account.
"""

from __future__ import annotations

import getpass
import io
import json
import shutil
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from paho.mqtt.enums import CallbackAPIVersion
from rest_framework.test import APIClient

from devices import delivery, mqtt_accounts
from devices.agent import Agent, ApiError
from devices.agent.__main__ import main as agent_main
from devices.agent.mqtt import MqttListener
from devices.models import Device, DeviceCommand, MqttAccount
from devices.protocol import topic_for
from devices.services.commands import StateChange, device_states_apply
from devices.services.enrolment import enrollment_challenge_issue
from devices.services.tokens import enrollment_token_create
from portal.models import AuditEvent
from tests.factories import DeviceFactory, enrolment_body
from tests.local_services import free_port, wait_for
from tests.test_settings import PRODUCTION, _manage

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONF = REPO / "deploy" / "mosquitto" / "finlock.conf"
SHIPPED_DYNSEC_LINE = "\nplugin_opt_config_file /var/lib/mosquitto/dynamic-security.json\n"
ADMIN = "admin"
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
PUBLISHER_PASSWORD = "publisher-" + uuid.uuid4().hex
PROVISIONER_PASSWORD = "provisioner-" + uuid.uuid4().hex
PHONE_PASSWORD_KEY = "test-only-phone-password-key-" + uuid.uuid4().hex
ENROLL = "/api/device/v1/enroll"


def _plugin_path() -> str:
    for line in SHIPPED_CONF.read_text().splitlines():
        if line.startswith("plugin "):
            return line.split(None, 1)[1].strip()
    raise AssertionError("the shipped configuration loads no plugin")


def _require_mosquitto() -> None:
    missing = [tool for tool in ("mosquitto", "mosquitto_ctrl") if not shutil.which(tool)]
    if not Path(_plugin_path()).exists():
        missing.append(_plugin_path())
    if missing:
        reason = f"needs Mosquitto 2 with its dynamic-security plugin (apt-get install mosquitto): {', '.join(missing)}"
        if django_settings.FINLOCK_REQUIRE_SERVICES:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


class SecuredBroker:
    """A throw-away Mosquitto running finlock's shipped security configuration."""

    def __init__(self, root: Path):
        root.mkdir()
        self.root = root
        self.port = free_port()
        self.dynsec_file = root / "dynamic-security.json"
        self.log_path = root / "mosquitto.log"
        conf_d = root / "conf.d"
        conf_d.mkdir()
        shipped = SHIPPED_CONF.read_text()
        assert shipped.count(SHIPPED_DYNSEC_LINE) == 1, "the shipped configuration moved the plugin's file"
        ours = f"\nplugin_opt_config_file {self.dynsec_file}\n"
        (conf_d / "finlock.conf").write_text(shipped.replace(SHIPPED_DYNSEC_LINE, ours))
        # What Debian's mosquitto.conf and a listeners file provide in a deployment.
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\npersistence false\nlog_dest file {self.log_path}\n"
            f"include_dir {conf_d}\nlistener {self.port} 127.0.0.1\n"
        )
        self.process: subprocess.Popen | None = None

    def init(self) -> None:
        """The README's first step: the plugin's file with its administrator."""
        subprocess.run(
            ["mosquitto_ctrl", "dynsec", "init", str(self.dynsec_file), ADMIN, ADMIN_PASSWORD],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        assert wait_for(self.listening, timeout=10), f"mosquitto did not start:\n{self.log()}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        assert wait_for(lambda: not self.listening(), timeout=5)

    def listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url(self, username: str | None = None, password: str | None = None) -> str:
        auth = f"{username}:{password}@" if username else ""
        return f"mqtt://{auth}127.0.0.1:{self.port}"


class Session:
    """One MQTT connection as some account: how the broker answered, and what it delivered."""

    def __init__(self, broker: SecuredBroker, username=None, password=None, client_id=None):
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:10]}", protocol=mqtt.MQTTv311
        )
        if username:
            self.client.username_pw_set(username, password)
        self.broker = broker
        self.reason = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self._subacks: dict[int, list] = {}
        self._suback = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_args: self.disconnected.set()
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.messages.append((message.topic, message.payload))

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties):
        self.reason = reason_code
        self.connected.set()

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties):
        with self._suback:
            self._subacks[mid] = reason_codes
            self._suback.notify_all()

    def connect(self) -> bool:
        """True when the broker accepted the account."""
        self.client.reconnect_delay_set(min_delay=60, max_delay=60)  # one try per test, no retries
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK"
        return not self.reason.is_failure

    def subscribe(self, topic: str) -> bool:
        """True when the broker granted the subscription."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        with self._suback:
            assert self._suback.wait_for(lambda: mid in self._subacks, timeout=5), "no SUBACK"
        return not any(code.is_failure for code in self._subacks[mid])

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish QoS 1 and wait for the PUBACK: the broker has processed the message when it returns."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)
        assert info.is_published()

    def payloads(self, topic: str) -> list[bytes]:
        return [payload for got, payload in self.messages if got == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class DjangoTransport:
    """The phone's HTTP calls, through Django's test client to the real device API."""

    def post(self, server_url, call, body, credential=None):
        client = APIClient()
        if credential:
            client.credentials(HTTP_AUTHORIZATION=f"Device {credential}")
        response = client.post(f"/api/device/v1/{call}", body, format="json")
        if response.status_code >= 400:
            raise ApiError(f"{call} answered {response.status_code}", status=response.status_code, body=response.json())
        return response.json()


@pytest.fixture
def celery_eager():
    """Tasks queued after commit run in-process: this story has a real broker run but no worker."""
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.fixture
def broker(settings, tmp_path, monkeypatch, db):
    """A secured Mosquitto set up as the README says, and finlock configured to use it."""
    _require_mosquitto()
    server = SecuredBroker(tmp_path / "broker")
    server.init()
    server.start()
    settings.MQTT_URL = server.url("finlock", PUBLISHER_PASSWORD)
    settings.MQTT_PROVISION_URL = server.url("finlock-provisioner", PROVISIONER_PASSWORD)
    settings.MQTT_PHONE_PASSWORD_KEY = PHONE_PASSWORD_KEY
    settings.MQTT_PUBLISH_TIMEOUT_SECONDS = 5
    monkeypatch.setenv("MQTT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    call_command("mqtt_setup", "--admin-user", ADMIN, stdout=io.StringIO())
    yield server
    server.stop()


@pytest.fixture
def sessions(broker):
    opened: list[Session] = []

    def open_session(username=None, password=None, client_id=None) -> Session:
        session = Session(broker, username, password, client_id)
        opened.append(session)
        return session

    yield open_session
    for session in opened:
        session.close()


@pytest.fixture
def enrolment_token(provider_a):
    _token, secret = enrollment_token_create(provider=provider_a, name="Colombo shop", actor=None)
    return secret


@pytest.fixture
def enrol(enrolment_token, django_capture_on_commit_callbacks, celery_eager):
    """Enrol a device through the device API, running what its commit queues (the account's sync)."""

    def enrol(device: Device) -> dict:
        with django_capture_on_commit_callbacks(execute=True):
            response = APIClient().post(ENROLL, signed_enrolment(device, enrolment_token), format="json")
        assert response.status_code == 201, response.json()
        return response.json()

    return enrol


#: Each test phone's device key, as a phone keeps it in reset-protected storage: it signs every enrolment.
_device_keys: dict[str, Ed25519PrivateKey] = {}


def signed_enrolment(device: Device, token: str) -> dict:
    """The enrol body a phone sends: a fresh challenge signed with its device key (docs/lock-pipeline.md)."""
    key = _device_keys.setdefault(device.imei, Ed25519PrivateKey.generate())
    return enrolment_body(imei=device.imei, token=token, key=key, challenge=enrollment_challenge_issue()["challenge"])


def phone_session(sessions, answer: dict, *, password: str | None = None, client_id: str | None = None) -> Session:
    account = answer["mqtt"]
    return sessions(account["username"], password or account["password"], client_id or account["username"])


def pushed(phone: Agent, seq: int) -> bool:
    """The phone applied command ``seq`` as it arrived over MQTT (not from a check-in)."""
    return any(e.get("source") == "mqtt" and e.get("event") == "applied" and e.get("seq") == seq for e in phone.log)


def lock(device: Device, django_capture_on_commit_callbacks) -> DeviceCommand:
    """finlock locks the phone; the delivery (queued after commit) publishes it with finlock's account."""
    with django_capture_on_commit_callbacks(execute=True):
        (command,) = device_states_apply(
            changes=[StateChange(device_id=device.pk, state="locked", reason="overdue", screen={"title": "Locked"})]
        )
    return command


# --- the broker's rules --------------------------------------------------------------------


@pytest.mark.mqtt
def test_anonymous_clients_and_wrong_passwords_are_refused(broker, sessions, provider_a, enrol):
    answer = enrol(DeviceFactory(provider=provider_a))

    assert not sessions().connect()  # no username at all
    assert not sessions("finlock", "not-the-password").connect()
    assert not sessions(ADMIN, "guess").connect()
    assert not phone_session(sessions, answer, password="not-the-password").connect()
    assert not sessions(str(uuid.uuid4()), "whatever").connect()  # a device uid the broker does not know
    assert phone_session(sessions, answer).connect()  # the real credential works


@pytest.mark.mqtt
def test_a_phone_subscribes_to_its_own_topic_and_applies_the_signed_command_finlock_published(
    broker, provider_a, enrolment_token, tmp_path, django_capture_on_commit_callbacks, celery_eager
):
    device = DeviceFactory(provider=provider_a)
    phone = Agent(tmp_path / "phone", transport=DjangoTransport())
    with django_capture_on_commit_callbacks(execute=True):
        phone.enroll("http://testserver", device.imei, enrolment_token)
    enrolment = phone.state.enrolment
    assert enrolment.mqtt_username == str(device.uid) and enrolment.mqtt_password

    # The phone's broker URL names no account: it signs in with the one from its enrolment.
    listener = MqttListener(phone, broker.url()).start()
    try:
        assert listener.wait_subscribed(10), broker.log()
        command = lock(device, django_capture_on_commit_callbacks)
        assert wait_for(lambda: phone.state.state == "locked", timeout=10)
    finally:
        listener.stop()

    assert pushed(phone, command.seq) and phone.state.last_seq == command.seq
    command.refresh_from_db()
    assert command.delivered_at is not None and command.last_error == ""


@pytest.mark.mqtt
def test_a_phone_cannot_subscribe_to_another_phones_topic_or_a_wildcard_and_hears_nothing_of_them(
    broker, sessions, provider_a, enrol
):
    mine, theirs = DeviceFactory(provider=provider_a), DeviceFactory(provider=provider_a)
    answer, their_answer = enrol(mine), enrol(theirs)
    phone = phone_session(sessions, answer)
    assert phone.connect()

    assert phone.subscribe(topic_for(str(mine.uid)))
    for topic in (
        topic_for(str(theirs.uid)),
        topic_for("+"),
        "finlock/#",
        "#",
        "$SYS/#",
        "$CONTROL/dynamic-security/#",
    ):
        assert not phone.subscribe(topic), f"a phone may subscribe to {topic}"

    finlock = sessions("finlock", PUBLISHER_PASSWORD)
    assert finlock.connect()
    finlock.publish(topic_for(str(theirs.uid)), b"for the other phone")
    finlock.publish(topic_for(str(mine.uid)), b"for this phone")
    assert wait_for(lambda: b"for this phone" in phone.payloads(topic_for(str(mine.uid))), timeout=5)
    # Its own retained enrolment command and the new one; nothing of the other phone's.
    assert {topic for topic, _payload in phone.messages} == {topic_for(str(mine.uid))}

    # Nor can it sign in under the other phone's client id to push that phone off the broker.
    assert not phone_session(sessions, answer, client_id=their_answer["mqtt"]["username"]).connect()
    assert not phone_session(sessions, answer, client_id=f"anything-{uuid.uuid4().hex[:6]}").connect()


@pytest.mark.mqtt
def test_a_phone_cannot_publish_and_only_finlocks_account_reaches_a_phone(broker, sessions, provider_a, enrol):
    mine, theirs = DeviceFactory(provider=provider_a), DeviceFactory(provider=provider_a)
    answer, their_answer = enrol(mine), enrol(theirs)
    my_topic, their_topic = topic_for(str(mine.uid)), topic_for(str(theirs.uid))
    finlock = sessions("finlock", PUBLISHER_PASSWORD)
    assert finlock.connect()
    finlock.publish(my_topic, b"finlock's retained command", retain=True)
    phone, other = phone_session(sessions, answer), phone_session(sessions, their_answer)
    assert phone.connect() and other.connect()
    assert phone.subscribe(my_topic) and other.subscribe(their_topic)

    # The phone forges a command for itself (retained, to outlive it) and for the other phone;
    # finlock's other accounts try too. The broker acknowledges and drops every one of them.
    phone.publish(my_topic, b"forged by the phone", retain=True)
    phone.publish(their_topic, b"forged by the phone")
    provisioner = sessions("finlock-provisioner", PROVISIONER_PASSWORD)
    admin = sessions(ADMIN, ADMIN_PASSWORD)
    assert provisioner.connect() and admin.connect()
    provisioner.publish(their_topic, b"from the provisioner")
    admin.publish(their_topic, b"from the administrator")
    finlock.publish(their_topic, b"finlock's command")

    assert wait_for(lambda: b"finlock's command" in other.payloads(their_topic), timeout=5)
    forged = {b"forged by the phone", b"from the provisioner", b"from the administrator"}
    assert not forged & set(other.payloads(their_topic))
    assert phone.payloads(my_topic) == [b"finlock's retained command"]
    # A phone coming online still gets finlock's retained command, not the forged one.
    again = phone_session(sessions, answer)
    assert again.connect() and again.subscribe(my_topic)
    assert wait_for(lambda: again.payloads(my_topic), timeout=5)
    assert again.payloads(my_topic) == [b"finlock's retained command"]


@pytest.mark.mqtt
def test_finlocks_publishing_account_cannot_create_broker_accounts(broker, sessions):
    finlock = sessions("finlock", PUBLISHER_PASSWORD)
    assert finlock.connect()
    intruder = {"command": "createClient", "username": "intruder", "password": "intruder-password"}
    finlock.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": [intruder]}).encode())

    assert not sessions("intruder", "intruder-password").connect()


# --- the phone's credential ------------------------------------------------------------


@pytest.mark.mqtt
def test_enrolling_again_changes_the_password_and_the_old_one_is_refused(broker, sessions, provider_a, enrol):
    device = DeviceFactory(provider=provider_a)
    first = enrol(device)
    old_session = phone_session(sessions, first)
    assert old_session.connect() and old_session.subscribe(topic_for(str(device.uid)))

    second = enrol(device)

    assert second["mqtt"]["username"] == first["mqtt"]["username"] == str(device.uid)
    assert second["mqtt"]["password"] != first["mqtt"]["password"]
    assert old_session.disconnected.wait(5), "the session signed in with the old password lives on"
    assert not phone_session(sessions, first).connect()
    fresh = phone_session(sessions, second)
    assert fresh.connect() and fresh.subscribe(topic_for(str(device.uid)))


@pytest.mark.mqtt
def test_a_listening_phone_that_enrols_again_keeps_receiving_pushes(
    broker, provider_a, enrolment_token, tmp_path, django_capture_on_commit_callbacks, celery_eager
):
    device = DeviceFactory(provider=provider_a)
    phone = Agent(tmp_path / "phone", transport=DjangoTransport())
    with django_capture_on_commit_callbacks(execute=True):
        phone.enroll("http://testserver", device.imei, enrolment_token)
    first_password = phone.state.enrolment.mqtt_password
    listener = MqttListener(phone, broker.url()).start()
    try:
        assert listener.wait_subscribed(10)
        with django_capture_on_commit_callbacks(execute=True):
            phone.enroll("http://testserver", device.imei, enrolment_token)  # e.g. after a 401
        assert phone.state.enrolment.mqtt_password != first_password
        # The broker ended the old session; the agent signs in again with its new password.
        assert wait_for(lambda: not listener.subscribed.is_set(), timeout=5)
        assert listener.wait_subscribed(15), broker.log()
        command = lock(device, django_capture_on_commit_callbacks)
        assert wait_for(lambda: phone.state.state == "locked", timeout=10)
    finally:
        listener.stop()
    assert pushed(phone, command.seq)


@pytest.mark.mqtt
def test_with_the_broker_down_at_enrolment_the_periodic_job_creates_the_account(broker, sessions, provider_a, enrol):
    device = DeviceFactory(provider=provider_a)
    broker.stop()

    answer = enrol(device)  # the phone's enrolment never waits for the broker

    account = MqttAccount.objects.get(device=device)
    assert account.synced_digest == "" and "unreachable" in account.last_error
    broker.start()
    assert not phone_session(sessions, answer).connect()  # the broker has no account for it yet

    schedule = {entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    assert "devices.sync_mqtt_accounts" in schedule
    from devices.tasks import sync_mqtt_accounts

    assert sync_mqtt_accounts() == 1

    phone = phone_session(sessions, answer)
    assert phone.connect() and phone.subscribe(topic_for(str(device.uid)))
    account.refresh_from_db()
    device.refresh_from_db()
    assert (account.synced_digest, account.last_error) == (device.credential_digest, "")
    assert sync_mqtt_accounts() == 0  # nothing left behind
    event = AuditEvent.objects.filter(action="device.mqtt_account", object_id=str(device.pk)).get()
    assert event.after["broker_password"] == "current enrolment"
    assert answer["mqtt"]["password"] not in json.dumps([event.before, event.after])


@pytest.mark.mqtt
def test_the_publisher_password_is_never_logged_nor_stored(
    broker, provider_a, settings, caplog, django_capture_on_commit_callbacks
):
    wrong = "wrong-" + uuid.uuid4().hex
    settings.MQTT_URL = broker.url("finlock", wrong)
    device = DeviceFactory(provider=provider_a)
    with django_capture_on_commit_callbacks(execute=False):
        (command,) = device_states_apply(changes=[StateChange(device_id=device.pk, state="locked")])

    assert delivery.command_deliver(command_id=command.pk).status == "retry"

    command.refresh_from_db()
    assert "refused the connection" in command.last_error
    assert wrong not in command.last_error and wrong not in caplog.text
    assert PUBLISHER_PASSWORD not in command.last_error


@pytest.mark.mqtt
def test_mqtt_setup_runs_again_harmlessly_and_audits_no_password(broker, sessions, monkeypatch, capsys):
    call_command("mqtt_setup", "--admin-user", ADMIN)
    assert "modifyRole finlock-publisher" in capsys.readouterr().out

    assert sessions("finlock", PUBLISHER_PASSWORD).connect()
    events = AuditEvent.objects.filter(action="mqtt.broker_setup")
    assert events.count() == 2
    trail = json.dumps([event.after for event in events])
    for secret in (ADMIN_PASSWORD, PUBLISHER_PASSWORD, PROVISIONER_PASSWORD):
        assert secret not in trail

    monkeypatch.setenv("MQTT_ADMIN_PASSWORD", "not-the-admin-password")
    with pytest.raises(CommandError, match="refused the account"):
        call_command("mqtt_setup", "--admin-user", ADMIN)


# --- without a broker ------------------------------------------------------------------------


def test_without_phone_accounts_the_enrolment_answer_carries_no_mqtt_credential(settings, provider_a, enrolment_token):
    settings.MQTT_PROVISION_URL = None
    device = DeviceFactory(provider=provider_a)

    response = APIClient().post(ENROLL, signed_enrolment(device, enrolment_token), format="json")

    assert response.status_code == 201
    assert response.json()["mqtt"] is None
    assert response.json()["mqtt_topic"] == topic_for(str(device.uid))
    assert not MqttAccount.objects.exists()


def test_the_phones_mqtt_password_is_derived_and_stored_nowhere(
    settings, provider_a, enrolment_token, django_capture_on_commit_callbacks, celery_eager
):
    settings.MQTT_URL = f"mqtt://finlock:{PUBLISHER_PASSWORD}@127.0.0.1:{free_port()}"
    settings.MQTT_PROVISION_URL = f"mqtt://finlock-provisioner:{PROVISIONER_PASSWORD}@127.0.0.1:{free_port()}"
    settings.MQTT_PHONE_PASSWORD_KEY = PHONE_PASSWORD_KEY
    device = DeviceFactory(provider=provider_a)

    with django_capture_on_commit_callbacks(execute=True):  # the broker is down: the sync fails, quietly
        response = APIClient().post(ENROLL, signed_enrolment(device, enrolment_token), format="json")

    assert response.status_code == 201
    account = response.json()["mqtt"]
    device.refresh_from_db()
    assert account == {
        "username": str(device.uid),
        "password": mqtt_accounts.phone_password(
            device_uid=str(device.uid), credential_digest=device.credential_digest
        ),
    }
    stored = json.dumps(
        [
            list(Device.objects.values()),
            list(MqttAccount.objects.values()),
            list(AuditEvent.objects.values("before", "after", "object_repr")),
        ],
        default=str,
    )
    assert account["password"] not in stored
    assert "unreachable" in MqttAccount.objects.get(device=device).last_error


def test_the_agents_status_dump_hides_the_mqtt_password(tmp_path, capsys):
    phone = Agent(tmp_path / "phone")
    phone.install_enrolment(
        device=str(uuid.uuid4()),
        imei="351234560000648",
        server_keys={"k1": "AAAA"},
        credential="fld_secret",
        mqtt={"username": "u", "password": "the-mqtt-password"},
    )

    assert agent_main(["status", "--json", "--state-dir", str(tmp_path / "phone")]) == 0

    out = capsys.readouterr().out
    assert "the-mqtt-password" not in out and "fld_secret" not in out
    assert json.loads(out)["agent"]["enrolment"]["mqtt_username"] == "u"


# --- configuration ----------------------------------------------------------------------------


def test_production_refuses_an_anonymous_broker_or_phones_without_accounts(tmp_path):
    base = PRODUCTION | {"FINLOCK_VAR_DIR": str(tmp_path), "MQTT_PROVISION_URL": "", "MQTT_PHONE_PASSWORD_KEY": ""}

    anonymous = _manage("check", env=base | {"MQTT_URL": "mqtt://127.0.0.1:1883"})
    assert anonymous.returncode != 0
    assert "MQTT_URL must carry the account it signs in with" in anonymous.stderr

    no_phone_accounts = _manage("check", env=base | {"MQTT_URL": f"mqtt://finlock:{PUBLISHER_PASSWORD}@127.0.0.1"})
    assert no_phone_accounts.returncode != 0
    assert "MQTT_PROVISION_URL must be set when DEBUG is off" in no_phone_accounts.stderr
    assert PUBLISHER_PASSWORD not in no_phone_accounts.stderr

    no_key = _manage(
        "check",
        env=base
        | {
            "MQTT_URL": f"mqtt://finlock:{PUBLISHER_PASSWORD}@127.0.0.1",
            "MQTT_PROVISION_URL": f"mqtt://finlock-provisioner:{PROVISIONER_PASSWORD}@127.0.0.1",
        },
    )
    assert no_key.returncode != 0
    assert "MQTT_PHONE_PASSWORD_KEY must be set" in no_key.stderr

    secured = _manage(
        "check",
        env=base
        | {
            "MQTT_URL": f"mqtt://finlock:{PUBLISHER_PASSWORD}@127.0.0.1",
            "MQTT_PROVISION_URL": f"mqtt://finlock-provisioner:{PROVISIONER_PASSWORD}@127.0.0.1",
            "MQTT_PHONE_PASSWORD_KEY": PHONE_PASSWORD_KEY,
        },
    )
    assert secured.returncode == 0, secured.stderr
