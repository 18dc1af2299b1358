"""Push: the device's MQTT topic, where the server publishes each command retained with QoS 1.

Retained means a phone that comes online gets its latest command at once; QoS 1 means at
least once, which is harmless because the agent drops what it has already applied. The
paho loop thread reconnects by itself (1 s, doubling to 60 s) and resubscribes on every
connect, so a broker restart or a dead network only delays commands.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.agent.core import Agent, AgentError
from devices.agent.rules import Outcome

logger = logging.getLogger("finlock.agent.mqtt")


def parse_mqtt_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """``mqtt://user:pass@host:1883`` or ``mqtts://host`` → host, port, tls, username, password."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"an MQTT URL looks like mqtt://host:1883 or mqtts://host:8883, not {url!r}")
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, tls, username, password


class MqttListener:
    """Feeds every message on the device's topic through ``Agent.handle_envelope``."""

    def __init__(
        self,
        agent: Agent,
        url: str,
        *,
        topic: str | None = None,
        keepalive: int = 30,
        on_outcome: Callable[[Outcome], None] | None = None,
    ):
        enrolment = agent.state.enrolment
        if topic is None:
            if enrolment is None or not enrolment.mqtt_topic:
                raise AgentError("not enrolled: the MQTT topic comes with the enrolment")
            topic = enrolment.mqtt_topic
        self.agent = agent
        self.topic = topic
        self.keepalive = keepalive
        self.on_outcome = on_outcome
        self.host, self.port, tls, username, password = parse_mqtt_url(url)
        self.subscribed = threading.Event()
        device = enrolment.device if enrolment else "unenrolled"
        # The phone's own account from its enrolment, unless the URL names one. The broker
        # binds that account to the client id = its username, so it is used as the client id.
        self._own_account = not username and bool(enrolment and enrolment.mqtt_username)
        client_id = f"finlock-agent-{device}-{uuid.uuid4().hex[:8]}"
        if self._own_account and enrolment is not None and enrolment.mqtt_username:
            username, password = enrolment.mqtt_username, enrolment.mqtt_password
            client_id = enrolment.mqtt_username
        self.client_id = client_id
        # A clean session: the retained message already carries the latest command, and
        # anything older that a persistent session would queue is stale by definition.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def start(self) -> MqttListener:
        """Connect in the background; the loop thread retries until the broker answers."""
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_subscribed(self, timeout: float) -> bool:
        return self.subscribed.wait(timeout)

    # paho callbacks run on its loop thread; the agent's store lock makes that safe.

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.warning("MQTT broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:
        if any(rc.is_failure for rc in reason_code_list):
            logger.warning("MQTT subscription to %s refused: %s", self.topic, reason_code_list)
            return
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.subscribed.clear()
        if reason_code.is_failure:
            logger.warning("MQTT connection lost (%s); reconnecting", reason_code)
        if self._own_account:
            # Enrolling again gives a new password and the broker ends the session that used the
            # old one: reconnect with what the phone holds now.
            enrolment = self.agent.state.enrolment
            if enrolment is not None and enrolment.mqtt_username == self.client_id:
                client.username_pw_set(enrolment.mqtt_username, enrolment.mqtt_password)

    def _on_message(self, client, userdata, message) -> None:
        if not message.payload:
            return  # a retained message being cleared, not a command
        try:
            outcome = self.agent.handle_envelope(message.payload, source="mqtt")
        except Exception:
            # An exception here would end paho's loop thread, and with it all push delivery.
            logger.exception("could not handle the MQTT message on %s", message.topic)
            return
        if self.on_outcome is not None:
            self.on_outcome(outcome)
