"""The agent over real HTTP: enrolment, check-in and acknowledgement against a stub device API.

The stub (standard library only, in a thread) answers exactly the shapes of "Device API"
in docs/lock-pipeline.md, so these tests pin the phone's side of the wire without a
Django server; the server's own tests pin the other side.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devices.agent import Agent, ApiError, HttpTransport
from devices.protocol import topic_for
from tests.test_agent import IMEI, OFFLINE_SECRET, OFFLINE_STARTING_CODE, REPO, Provider, reads

ENROLMENT_TOKEN = "enrol-7f3a"


class StubFinlock:
    """The server side of one phone: its current signed command, credential, and what it heard."""

    def __init__(self) -> None:
        self.provider = Provider()
        self.current = self.provider.envelope("locked")
        self.credential: str | None = None
        self.requests: list[tuple[str, dict, str | None]] = []

    def answer(self, call: str, body: dict, authorization: str | None) -> tuple[int, dict]:
        self.requests.append((call, body, authorization))
        if call == "enroll":
            if body.get("imei") != IMEI or body.get("enrollment_token") != ENROLMENT_TOKEN:
                return 400, {"detail": "Enrolment refused."}
            # Enrolling again issues a new credential: the old one stops working.
            self.credential = secrets.token_urlsafe(16)
            return 201, {
                "device": self.provider.device,
                "credential": self.credential,
                "server_keys": self.provider.server_keys,
                "offline": {"secret": OFFLINE_SECRET, "starting_code": OFFLINE_STARTING_CODE},
                "mqtt_topic": topic_for(self.provider.device),
                "envelope": self.current,
            }
        if authorization != f"Device {self.credential}" or self.credential is None:
            return 401, {"detail": "Invalid device credential."}
        if call == "checkin":
            return 200, {"envelope": self.current, "server_keys": self.provider.server_keys}
        if call == "ack":
            return 200, {"ok": True}
        return 404, {"detail": "Not found."}

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
    assert server.heard("enroll")[0] == {
        "imei": IMEI,
        "enrollment_token": ENROLMENT_TOKEN,
        "app_version": phone.app_version,
    }
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
    old_credential = server.credential
    phone.factory_reset()

    assert phone.enroll(server.url, IMEI, ENROLMENT_TOKEN).accepted

    assert phone.state.state == "locked"
    assert server.credential != old_credential
    assert phone.checkin().status == "duplicate"  # the new credential works


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


def test_after_a_key_rotation_announced_at_check_in_the_phone_accepts_the_new_key_and_keeps_the_old(server, phone):
    phone.enroll(server.url, IMEI, ENROLMENT_TOKEN)
    # The server publishes its new key first (phones learn it at check-in), then signs with it.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    server.provider.key_id, server.provider.key = "k2027a", Ed25519PrivateKey.generate()
    server.current = server.provider.envelope("unlocked")

    outcome = phone.checkin()

    assert outcome.accepted and phone.state.state == "unlocked"
    assert set(phone.state.enrolment.server_keys) == {"k2026a", "k2027a"}
