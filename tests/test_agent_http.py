"""The agent over real HTTP: enrolment, check-in and acknowledgement against a stub device API.

The stub (standard library only, in a thread) answers exactly the shapes of "Device API"
in docs/lock-pipeline.md, so these tests pin the phone's side of the wire without a
Django server; the server's own tests pin the other side.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from devices.agent import Agent, ApiError, HttpTransport
from devices.protocol import b64, enrollment_message, topic_for, unb64
from tests.test_agent import IMEI, OFFLINE_SECRET, OFFLINE_STARTING_CODE, REPO, Provider, reads

ENROLMENT_TOKEN = "enrol-7f3a"


class StubFinlock:
    """The server side of one phone: its current signed command, credential, and what it heard.

    Enrolment as docs/lock-pipeline.md specifies it: a challenge, signed with the phone's
    device key; the first enrolment registers the key (and hands out the offline secret,
    once), a later one must be signed with that key or bring the staff's re-enrolment code.
    """

    def __init__(self) -> None:
        self.provider = Provider()
        self.current = self.provider.envelope("locked")
        self.statements = [self.provider.key_statement()]  # the signed key statements, oldest first
        self.credential: str | None = None
        self.device_key: str | None = None
        self.reenrollment_code: str | None = None
        self.offline_sent = False
        self.challenges: set[str] = set()  # issued and not used yet
        self.issued: list[str] = []
        self.requests: list[tuple[str, dict, str | None]] = []

    def answer(self, call: str, body: dict, authorization: str | None) -> tuple[int, dict]:
        self.requests.append((call, body, authorization))
        if call == "enroll/challenge":
            challenge = b64(secrets.token_bytes(32))
            self.challenges.add(challenge)
            self.issued.append(challenge)
            return 200, {"challenge": challenge, "expires_in": 300}
        if call == "enroll":
            return self.enroll(body)
        if authorization != f"Device {self.credential}" or self.credential is None:
            return 401, {"detail": "Invalid device credential."}
        if call == "checkin":
            return 200, {"envelope": self.current, "key_statements": self.statements}
        if call == "ack":
            return 200, {"ok": True}
        return 404, {"detail": "Not found."}

    def enroll(self, body: dict) -> tuple[int, dict]:
        refused = 400, {"detail": "Enrolment refused."}
        if body.get("imei") != IMEI or body.get("enrollment_token") != ENROLMENT_TOKEN:
            return refused
        challenge, key = body.get("challenge"), body.get("device_key")
        if challenge not in self.challenges:
            return refused  # unknown, or already used
        self.challenges.discard(challenge)
        code = body.get("reenrollment_code")
        proven = self.device_key is None or key == self.device_key
        if not proven and code is not None and code == self.reenrollment_code:
            proven, self.reenrollment_code = True, None
        try:
            message = enrollment_message(challenge=challenge, imei=IMEI, device_key=key)
            Ed25519PublicKey.from_public_bytes(unb64(key)).verify(unb64(body.get("signature", "")), message)
        except (InvalidSignature, ValueError, TypeError):
            return refused
        if not proven:
            return refused
        self.device_key = key
        # Enrolling again issues a new credential: the old one stops working.
        self.credential = secrets.token_urlsafe(16)
        offline = None
        if not self.offline_sent:
            offline, self.offline_sent = {"secret": OFFLINE_SECRET, "starting_code": OFFLINE_STARTING_CODE}, True
        return 201, {
            "device": self.provider.device,
            "credential": self.credential,
            "key_statements": self.statements,
            "offline": offline,
            "mqtt_topic": topic_for(self.provider.device),
            "envelope": self.current,
        }

    def heard(self, call: str) -> list[dict]:
        return [body for name, body, _auth in self.requests if name == call]


@pytest.fixture
def server():
    stub = StubFinlock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            prefix = "/api/device/v1/"
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            call = self.path[len(prefix) :] if self.path.startswith(prefix) else ""
            status, answer = stub.answer(call, body, self.headers.get("Authorization"))
            raw = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield stub
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def phone(tmp_path):
    return Agent(tmp_path / "phone", transport=HttpTransport(timeout=5))


def test_a_new_phone_enrols_shows_its_current_lock_and_acknowledges_it(server, phone):
    outcome = phone.enroll(server.url, IMEI, ENROLMENT_TOKEN)

    assert outcome.accepted and phone.state.state == "locked"
    sent = server.heard("enroll")[0]
    assert {k: sent[k] for k in ("imei", "enrollment_token", "app_version")} == {
        "imei": IMEI,
        "enrollment_token": ENROLMENT_TOKEN,
        "app_version": phone.app_version,
    }
    # Signed with a device key the phone made and keeps in reset-protected storage (never sent).
    assert sent["device_key"] == server.device_key and sent["challenge"] in server.issued
    assert phone.protected.device_key and phone.protected.device_key not in json.dumps(server.requests)
    assert phone.protected.offline.secret == OFFLINE_SECRET
    assert server.heard("ack") == [{"seq": 1, "state": "locked"}]
    assert server.requests[-1][2] == f"Device {server.credential}"
    assert phone.state.enrolment.mqtt_topic == f"finlock/v1/devices/{server.provider.device}/command"
    assert "LKR 12,500.00" in reads(phone)


def test_a_payment_whose_push_was_lost_still_unlocks_the_phone_at_its_next_check_in(server, phone):
    phone.enroll(server.url, IMEI, ENROLMENT_TOKEN)
    # The payment cleared the arrears; the MQTT push never arrived.
    server.current = server.provider.envelope("unlocked")

    outcome = phone.checkin()

    assert outcome.accepted and phone.state.state == "unlocked"
    assert server.heard("checkin")[-1] == {"state": "locked", "last_seq": 1, "app_version": phone.app_version}
    assert server.heard("ack")[-1] == {"seq": 2, "state": "unlocked"}


def test_a_check_in_with_nothing_new_changes_nothing(server, phone):
    phone.enroll(server.url, IMEI, ENROLMENT_TOKEN)

    assert phone.checkin().status == "duplicate"
    assert server.heard("ack") == [{"seq": 1, "state": "locked"}]  # acknowledged once, not at every check-in


def test_a_factory_reset_phone_enrols_again_and_is_locked_again(server, phone):
    phone.enroll(server.url, IMEI, ENROLMENT_TOKEN)
    old_credential, device_key = server.credential, server.device_key
    phone.factory_reset()

    assert phone.enroll(server.url, IMEI, ENROLMENT_TOKEN).verdict == "same"  # the lock it kept through the reset

    assert phone.state.state == "locked"
    assert server.credential != old_credential
    assert server.heard("enroll")[-1]["device_key"] == device_key  # signed with the key kept through the reset
    assert phone.checkin().status == "duplicate"  # the new credential works
    # The offline secret came once, with the first enrolment, and survived the reset.
    assert phone.protected.offline.secret == OFFLINE_SECRET


def test_a_phone_that_lost_its_protected_storage_needs_a_staff_code_to_enrol_again(server, phone):
    phone.enroll(server.url, IMEI, ENROLMENT_TOKEN)
    first_key = server.device_key
    shutil.rmtree(phone.store.root / "protected")  # re-flashed: the device key is gone
    phone.factory_reset()

    with pytest.raises(ApiError) as refused:
        phone.enroll(server.url, IMEI, ENROLMENT_TOKEN)
    assert refused.value.status == 400 and server.device_key == first_key

    server.reenrollment_code = "7K2M9QXD4TNBH3WE"  # issued by the provider's staff
    assert phone.enroll(server.url, IMEI, ENROLMENT_TOKEN, reenrollment_code="7K2M9QXD4TNBH3WE").accepted
    assert server.device_key != first_key and server.device_key == server.heard("enroll")[-1]["device_key"]
    assert phone.state.state == "locked"


def test_a_refused_enrolment_is_a_clear_error_and_enrols_nothing(server, phone):
    with pytest.raises(ApiError) as refused:
        phone.enroll(server.url, IMEI, "wrong-token")

    assert refused.value.status == 400
    assert "Enrolment refused." in str(refused.value)
    assert not phone.enrolled


def test_a_revoked_credential_is_reported_as_401(server, phone):
    phone.enroll(server.url, IMEI, ENROLMENT_TOKEN)
    server.credential = "revoked-and-replaced"

    with pytest.raises(ApiError) as refused:
        phone.checkin()

    assert refused.value.status == 401
    assert phone.log[-1]["event"] == "checkin_failed"


def test_an_unreachable_server_is_a_clear_error(phone):
    with pytest.raises(ApiError) as unreachable:
        phone.enroll("http://127.0.0.1:9", IMEI, ENROLMENT_TOKEN)

    assert unreachable.value.status is None
    assert "cannot reach http://127.0.0.1:9/api/device/v1/enroll" in str(unreachable.value)


def test_only_http_servers_are_contacted(phone):
    with pytest.raises(ApiError, match="must start with http"):
        phone.enroll("file:///etc", IMEI, ENROLMENT_TOKEN)


def test_run_once_enrols_checks_in_and_writes_the_html_screen(server, tmp_path):
    html_path = tmp_path / "screen.html"
    state_dir = tmp_path / "phone"

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "devices.agent",
            "run",
            "--server",
            server.url,
            "--imei",
            IMEI,
            "--token",
            ENROLMENT_TOKEN,
            "--state-dir",
            str(state_dir),
            "--html",
            str(html_path),
            "--once",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )

    assert run.returncode == 0, run.stderr
    assert f"enrolled as {server.provider.device}" in run.stderr
    assert 'id="amount">LKR 12,500.00<' in html_path.read_text()
    assert server.heard("checkin")  # it checked in after enrolling


def test_after_a_key_rotation_announced_at_check_in_the_phone_accepts_the_new_key(server, phone):
    phone.enroll(server.url, IMEI, ENROLMENT_TOKEN)
    # The server announces its new key first (a statement signed by the old key), then signs with it.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    old = Provider(key_id="k2026a", device=server.provider.device, key=server.provider.key)
    server.provider.key_id, server.provider.key = "k2027a", Ed25519PrivateKey.generate()
    server.statements.append(old.key_statement({**old.server_keys, **server.provider.server_keys}, seq=2))
    server.current = server.provider.envelope("unlocked")

    outcome = phone.checkin()

    assert outcome.accepted and phone.state.state == "unlocked"
    assert phone.phone.trusted_key_ids == ["k2026a", "k2027a"]
