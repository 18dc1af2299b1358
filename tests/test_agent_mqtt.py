"""Push delivery to the reference agent through a real Mosquitto broker.

Runs with ``MQTT_URL=mqtt://127.0.0.1:1883``; without a broker the conftest skips it (or
fails it under ``FINLOCK_REQUIRE_SERVICES=1``). Each test uses its own device id, hence its
own topic, and clears the retained message it leaves behind.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from devices.agent import Agent
from devices.agent.mqtt import MqttListener, parse_mqtt_url
from devices.protocol import topic_for
from tests.test_agent import Provider, reads

pytestmark = pytest.mark.mqtt


def publish(url: str, topic: str, payload: bytes | str, *, retain: bool = True) -> None:
    """What the server's delivery task does: QoS 1, retained, and wait for the broker's PUBACK."""
    host, port, _tls, username, password = parse_mqtt_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-publisher-{uuid.uuid4().hex[:8]}")
    if username:
        client.username_pw_set(username, password)
    client.connect(host, port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def _json(envelope: dict) -> str:
    return json.dumps(envelope)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def broker(settings):
    return settings.MQTT_URL


@pytest.fixture
def provider():
    return Provider(device=str(uuid.uuid4()))


@pytest.fixture
def topic(broker, provider):
    topic = topic_for(provider.device)
    yield topic
    # Leave the broker as we found it: an empty retained payload deletes the retained message.
    publish(broker, topic, b"", retain=True)


@pytest.fixture
def phone(tmp_path, provider):
    agent = Agent(tmp_path / "phone")
    provider.enrol(agent)
    return agent


@pytest.fixture
def listening(broker, phone):
    """Starts the phone's MQTT loop; stops it after the test."""
    listeners = []

    def start() -> MqttListener:
        listener = MqttListener(phone, broker).start()
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        listener.stop()


def test_a_phone_coming_online_gets_its_retained_lock_at_once(broker, topic, phone, provider, listening):
    # The server published the lock while the phone was off.
    publish(broker, topic, _json(provider.envelope("locked")))

    listening()

    assert wait_for(lambda: phone.state.state == "locked")
    assert phone.log[-1]["source"] == "mqtt"
    assert "LKR 12,500.00" in reads(phone)


def test_a_pushed_unlock_applies_and_a_forged_one_does_not(broker, topic, phone, provider, listening):
    publish(broker, topic, _json(provider.envelope("locked")))
    listener = listening()
    assert wait_for(lambda: phone.state.state == "locked")
    assert listener.wait_subscribed(5)

    forged = provider.seal(provider.command("unlocked"), key=Ed25519PrivateKey.generate())
    publish(broker, topic, _json(forged))
    assert wait_for(lambda: phone.log[-1]["event"] == "rejected")
    assert phone.log[-1]["reason"] == "bad signature"
    assert phone.state.state == "locked"

    publish(broker, topic, _json(provider.envelope("unlocked")))
    assert wait_for(lambda: phone.state.state == "unlocked")


def test_the_phone_reconnects_after_losing_the_broker(broker, topic, phone, provider, listening):
    publish(broker, topic, _json(provider.envelope("locked")))
    listener = listening()
    assert wait_for(lambda: phone.state.state == "locked") and listener.wait_subscribed(5)

    # The network drops under the phone (not a clean disconnect).
    listener.client.socket().shutdown(socket.SHUT_RDWR)
    assert wait_for(lambda: not listener.subscribed.is_set(), timeout=5)
    assert listener.wait_subscribed(15), "the agent did not reconnect and resubscribe"

    publish(broker, topic, _json(provider.envelope("unlocked")))
    assert wait_for(lambda: phone.state.state == "unlocked")
