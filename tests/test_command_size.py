"""A command stays small enough for every phone, and a million phones' check-in records fit in Redis.

Stories:
* the largest lock screen the demo's providers give (a Sinhala owner, five payment channels,
  five service centres, the platform's fallback) makes an envelope well under the 32 KB a
  phone accepts; a command over it is refused, naming the device and the size, and nothing
  is issued;
* (Redis) that command's check-in record is compressed to under 2 KB (against a dictionary of
  the screen's shared half, stored once), and the phone is answered the same bytes from it as
  from the database, also when Redis lost the dictionary;
* (Redis) a record never outlives the device's lease renewal moment: once the renewal is
  due, the check-in reaches the database path and the phone gets a renewed lease.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rest_framework.test import APIClient

from devices import checkin_cache, checkin_record
from devices.delivery import envelope_bytes
from devices.models import Device, DeviceCommand
from devices.protocol import MAX_ENVELOPE_BYTES, payload_of
from devices.services.commands import CommandTooLarge, StateChange, device_states_apply
from devices.services.enrolment import enrollment_challenge_issue
from devices.services.tokens import enrollment_token_create
from payments.locks.services import lock_sweep
from payments.models import PaymentChannel
from portal.models import AuditEvent
from tests.factories import CustomerFactory, DeviceFactory, OrganisationFactory, enrolment_body, make_contract

pytestmark = pytest.mark.django_db

# Tuesday 17 Feb 2026, 10:00 in Colombo: the 15 Jan installment is overdue, the phone locks.
COLOMBO_MORNING = dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC)
#: Record bytes per phone in Redis we design for: 2 GB for a million phones.
RECORD_TARGET = 2048

# Five ways to pay, as a Sri Lankan provider writes them (some instructions in Sinhala).
CHANNELS = [
    ("mobile_money", "eZ Cash", "#111# > Pay bills > Dialog Finance", "ඕනෑම දුරකථනයකින් #111# අමතන්න."),
    ("mobile_money", "mCash", "#144# > Bill payments > Dialog Finance", "Dial #144#, choose Bill payments."),
    ("bank_transfer", "Bank of Ceylon", "0071234567 (Dialog Finance PLC)", "ගිවිසුම් අංකය යොමුව ලෙස දක්වන්න."),
    ("bank_transfer", "Commercial Bank", "1000987654 (Dialog Finance PLC)", "Quote the contract number."),
    ("cash_agent", "Dialog outlets", "Any Dialog Arcade", "මුදල් ගෙවා රිසිට්පත තබා ගන්න."),
]
CENTRES = ["FixIt Colombo 03", "FixIt Kandy", "FixIt Galle", "FixIt Jaffna", "FixIt Kurunegala"]


@pytest.fixture
def largest_screen(provider_a, platform):
    """Provider A with five payment channels and five service centres; a Sinhala owner's contract."""
    for position, (kind, name, account, instructions) in enumerate(CHANNELS):
        PaymentChannel.objects.create(
            provider=provider_a,
            kind=kind,
            name=name,
            account=account,
            reference="{contract}",
            instructions=instructions,
            position=position,
        )
    for name in CENTRES:
        centre = OrganisationFactory(
            kind="service_center", name=f"{name} සේවා මධ්‍යස්ථානය", hotline_numbers=["+94112555777"]
        )
        centre.served_providers.add(provider_a)
    customer = CustomerFactory(provider=provider_a, preferred_language="si")
    return make_contract(provider_a, number="DLG-000123", customer=customer)


def test_the_largest_demo_screen_stays_well_under_the_bound(largest_screen):
    lock_sweep(now=COLOMBO_MORNING)
    command = DeviceCommand.objects.get(device=largest_screen.device)
    screen = command.payload["screen"]
    assert screen["language"] == "si"
    assert len(screen["payment_channels"]) == 5 and len(screen["service_centers"]) == 5

    size = len(envelope_bytes(command))
    assert size < MAX_ENVELOPE_BYTES // 2, f"{size} bytes: half the bound is the margin kept for longer texts"


def test_a_command_over_the_bound_is_refused_naming_the_device_and_the_size(provider_a):
    phone = DeviceFactory(provider=provider_a)
    essay = "ගෙවීම් උපදෙස් " * 1500  # a lock screen text pasted in by mistake: about 40 KB of Sinhala

    with pytest.raises(CommandTooLarge) as refused:
        device_states_apply(changes=[StateChange(device_id=phone.pk, state="locked", screen={"body": essay})])

    message = str(refused.value)
    assert f"device {phone.pk} ({phone.uid})" in message
    assert f"over the {MAX_ENVELOPE_BYTES}" in message
    size = int(message.split("would be ")[1].split(" bytes")[0])
    assert size > MAX_ENVELOPE_BYTES
    phone.refresh_from_db()
    assert phone.command_seq == 0 and phone.desired_state == "unlocked"
    assert not DeviceCommand.objects.filter(device=phone).exists()
    assert not AuditEvent.objects.filter(action="device.state", object_id=str(phone.pk)).exists()


# --- the check-in record in Redis ---------------------------------------------------------

CHECKIN = "/api/device/v1/checkin"


@pytest.fixture
def cache_on(settings):
    settings.CHECKIN_CACHE_SECONDS = 600
    settings.CHECKIN_LOCAL_SECONDS = 0.0  # every cached answer from the Redis record
    checkin_cache._local.clear()
    yield checkin_cache.redis_client()
    checkin_cache._local.clear()


def enrolled_phone(device: Device, provider, admin) -> APIClient:
    """The phone enrolled through the device API as it does itself; its client, credential set."""
    _token, secret = enrollment_token_create(provider=provider, name="Colombo shop", actor=admin)
    body = enrolment_body(
        imei=device.imei,
        token=secret,
        key=Ed25519PrivateKey.generate(),
        challenge=enrollment_challenge_issue()["challenge"],
        app_version="1.0",
    )
    response = APIClient().post("/api/device/v1/enroll", body, format="json")
    assert response.status_code == 201, response.json()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {response.json()['credential']}")
    return client


def checkin(client, last_seq: int, state: str):
    response = client.post(CHECKIN, {"state": state, "last_seq": last_seq, "app_version": "1.0"}, format="json")
    assert response.status_code == 200, response.content
    return response


@pytest.mark.redis
def test_the_sinhala_screens_record_is_compressed_under_2_kb_and_answers_the_same_bytes(
    largest_screen, provider_a, admin_a, cache_on, django_assert_num_queries
):
    device = largest_screen.device
    client = enrolled_phone(device, provider_a, admin_a)
    lock_sweep(now=COLOMBO_MORNING)
    seq = Device.objects.get(pk=device.pk).command_seq
    from_database = checkin(client, last_seq=seq, state="locked")  # records the report, fills the record

    with django_assert_num_queries(0):
        from_redis = checkin(client, last_seq=seq, state="locked")

    assert from_redis.content == from_database.content
    assert payload_of(from_redis.json()["envelope"])["screen"]["language"] == "si"
    record = f"{checkin_cache.RECORD}{device.pk}"
    stored = cache_on.memory_usage(record)
    assert stored <= RECORD_TARGET, f"{stored} bytes in Redis for a {len(from_redis.content)}-byte answer"

    # The screen's shared half is one dictionary for all such phones; if Redis lost it, the
    # database path answers (the same bytes) and stores it again.
    (dictionary,) = cache_on.keys(f"{checkin_cache.DICTIONARY}*")
    cache_on.delete(dictionary)
    checkin_record._dictionaries.clear()  # another process, which never fetched it
    assert checkin(client, last_seq=seq, state="locked").content == from_database.content
    assert cache_on.exists(dictionary)
    with django_assert_num_queries(0):
        assert checkin(client, last_seq=seq, state="locked").content == from_database.content


@pytest.mark.redis
def test_a_record_never_outlives_the_lease_renewal_so_a_due_renewal_reaches_the_phone(
    provider_a, admin_a, cache_on, settings
):
    settings.CHECKIN_CACHE_SECONDS = 3600
    phone = DeviceFactory(provider=provider_a)
    client = enrolled_phone(phone, provider_a, admin_a)
    device_states_apply(changes=[StateChange(device_id=phone.pk, state="unlocked", offline_lock_days=2)])
    seq = Device.objects.get(pk=phone.pk).command_seq
    record = f"{checkin_cache.RECORD}{phone.pk}"

    checkin(client, last_seq=seq, state="unlocked")  # the renewal is a day away: the record lives an hour
    assert 3500 < cache_on.ttl(record) <= 3600

    # Two seconds before the renewal is due (half the offline period has nearly passed):
    # the record lives those two seconds at most.
    Device.objects.filter(pk=phone.pk).update(lease_renew_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
    checkin_cache.invalidate([phone.pk])
    first = checkin(client, last_seq=seq, state="unlocked")
    assert 0 < cache_on.ttl(record) <= 2
    assert checkin(client, last_seq=seq, state="unlocked").content == first.content  # served from the record

    time.sleep(2.1)
    assert not cache_on.exists(record)
    renewed = payload_of(checkin(client, last_seq=seq, state="unlocked").json()["envelope"])
    assert renewed["seq"] == seq + 1 and renewed["state"] == "unlocked"  # the database path renewed the lease
    assert Device.objects.get(pk=phone.pk).lease_renew_at > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)


def test_a_provider_with_sixty_channels_still_locks_its_phones_and_no_one_elses_sweep_stops(largest_screen, provider_a):
    for n in range(55):  # 60 in all: more than any screen can show
        PaymentChannel.objects.create(
            provider=provider_a,
            kind="bank_transfer",
            name=f"Branch {n:02d} " + "ශාඛාව " * 10,  # near the 80-character limit
            account=f"0{n:02d}-1234567890",
            reference="{contract}",
            instructions="ගෙවීම් උපදෙස් " * 20,  # near the 300-character limit
            position=10 + n,
        )

    lock_sweep(now=COLOMBO_MORNING)

    command = DeviceCommand.objects.get(device=largest_screen.device)
    assert command.state == "locked"
    screen = command.payload["screen"]
    assert [c["name"] for c in screen["payment_channels"]][:5] == [name for _k, name, _a, _i in CHANNELS]
    assert len(screen["payment_channels"]) == 6  # the first six by position; the rest are for the portal
    assert len(envelope_bytes(command)) < MAX_ENVELOPE_BYTES


def test_an_unlock_or_a_release_is_never_held_back_by_an_oversized_screen(provider_a):
    phone = DeviceFactory(provider=provider_a)
    essay = "ගෙවීම් උපදෙස් " * 1500  # about 40 KB: a lock screen this long cannot be sent
    screen = {"language": "si", "provider": {"name": "Dialog"}, "hotline_numbers": ["+94117100100"], "body": essay}

    for state in ("unlocked", "released"):
        (command,) = device_states_apply(changes=[StateChange(device_id=phone.pk, state=state, screen=screen)])
        assert command.state == state
        assert command.payload["screen"] == {k: screen[k] for k in ("language", "provider", "hotline_numbers")}
        assert len(envelope_bytes(command)) < MAX_ENVELOPE_BYTES
