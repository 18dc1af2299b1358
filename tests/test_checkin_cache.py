"""A phone's routine check-in is answered from the cache, and never with an outdated command.

Stories (real Redis; devices/checkin_cache.py):
* a phone checking in as usual is answered without a database query, with exactly the
  bytes the database path would answer;
* a new command reaches the phone's next check-in; a record filled from rows read just
  before a change is never served;
* a phone that enrolled again (a factory reset) cannot check in with its old credential;
* a phone reporting a command the server has not seen acknowledged is answered by the
  database path, which records the report;
* the rate limit counts every check-in once, whichever path answered it;
* check-in times are buffered and written to the devices by the flush job, only forward
  and only for the credential that checked in;
* with Redis unreachable, check-ins are answered from the database.
"""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.utils import timezone
from rest_framework.test import APIClient

from devices import checkin_cache
from devices.services.checkin import device_checkins_flush
from devices.services.commands import StateChange, device_states_apply
from devices.services.enrolment import enrollment_challenge_issue
from devices.services.tokens import enrollment_token_create
from tests.factories import DeviceFactory, enrolment_body
from tests.phone import first_trust, read_command

pytestmark = [pytest.mark.redis, pytest.mark.django_db]

ENROLL = "/api/device/v1/enroll"
CHECKIN = "/api/device/v1/checkin"
ACK = "/api/device/v1/ack"


@pytest.fixture(autouse=True)
def cache_on(settings):
    settings.CHECKIN_CACHE_SECONDS = 600
    settings.CHECKIN_LOCAL_SECONDS = 1.0
    checkin_cache._local.clear()
    yield
    checkin_cache._local.clear()


@pytest.fixture
def token_a(provider_a, admin_a):
    _token, secret = enrollment_token_create(provider=provider_a, name="Colombo shop", actor=admin_a)
    return secret


@pytest.fixture
def phone(provider_a):
    return DeviceFactory(provider=provider_a)


#: Each test phone's device key, kept as a phone keeps it in reset-protected storage: it signs re-enrolments.
_keys: dict[str, Ed25519PrivateKey] = {}


def enroll(imei, token):
    key = _keys.setdefault(imei, Ed25519PrivateKey.generate())
    body = enrolment_body(
        imei=imei, token=token, key=key, challenge=enrollment_challenge_issue()["challenge"], app_version="1.0"
    )
    response = APIClient().post(ENROLL, body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def as_phone(credential) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {credential}")
    return client


def lock(device):
    (command,) = device_states_apply(
        changes=[
            StateChange(
                device_id=device.pk,
                state="locked",
                reason="Installment overdue",
                screen={"title": "Locked"},
                allowed_numbers=["119"],
            )
        ]
    )
    return command


@pytest.fixture
def locked_phone(phone, token_a):
    """An enrolled phone that applied a lock (seq 2) and acknowledged it, and its client."""
    enrolled = enroll(phone.imei, token_a)
    lock(phone)
    client = as_phone(enrolled["credential"])
    assert client.post(ACK, {"seq": 2, "state": "locked"}, format="json").status_code == 200
    return phone, client, enrolled


def checkin(client, last_seq=2, state="locked", app_version="1.0"):
    return client.post(CHECKIN, {"state": state, "last_seq": last_seq, "app_version": app_version}, format="json")


def test_a_routine_check_in_is_answered_without_the_database_and_with_the_same_bytes(
    locked_phone, django_assert_num_queries
):
    phone, client, enrolled = locked_phone
    from_database = checkin(client)  # the first one fills the record
    assert from_database.status_code == 200

    with django_assert_num_queries(0):
        from_memory = checkin(client)
    checkin_cache._local.clear()  # another process: only the Redis record
    with django_assert_num_queries(0):
        from_redis = checkin(client)

    assert from_memory.status_code == from_redis.status_code == 200
    assert from_memory.content == from_redis.content == from_database.content
    assert from_redis["Content-Type"] == from_database["Content-Type"] == "application/json"
    command = read_command(from_redis.json()["envelope"], first_trust(enrolled["key_statements"])[0])
    assert (command["seq"], command["state"]) == (2, "locked")


def test_a_new_command_reaches_the_next_check_in(locked_phone):
    phone, client, enrolled = locked_phone
    checkin(client)
    checkin(client)  # cached at both levels now

    unlock = device_states_apply(changes=[StateChange(device_id=phone.pk, state="unlocked", reason="Paid")])[0]

    command = read_command(checkin(client).json()["envelope"], first_trust(enrolled["key_statements"])[0])
    assert (command["seq"], command["state"]) == (unlock.seq, "unlocked")


def test_a_record_filled_before_a_change_is_never_served(locked_phone, django_assert_max_num_queries):
    """The fill reads the generation first; a change bumps it, so an older fill no longer matches."""
    phone, client, enrolled = locked_phone
    checkin(client)
    checkin_cache._local.clear()
    # Another process changed the device and bumped the generation after this record was filled.
    checkin_cache.invalidate([phone.pk])

    with django_assert_max_num_queries(20) as captured:
        response = checkin(client)

    assert response.status_code == 200
    assert len(captured.captured_queries) > 0, "a stale record was served"


def test_a_change_made_by_another_process_reaches_the_next_check_in_even_from_memory(locked_phone, monkeypatch):
    """The memory level checks the device's generation on every answer: no window in which it is late."""
    phone, client, enrolled = locked_phone
    checkin(client)
    checkin(client)  # this process remembers the answer now
    # As in another process: the Redis generation moves, this process's memory is not told.
    monkeypatch.setattr(checkin_cache, "_local_forget", lambda device_ids: None)
    unlock = device_states_apply(changes=[StateChange(device_id=phone.pk, state="unlocked", reason="Paid")])[0]

    command = read_command(checkin(client).json()["envelope"], first_trust(enrolled["key_statements"])[0])

    assert (command["seq"], command["state"]) == (unlock.seq, "unlocked")


def test_a_replaced_credential_is_refused_at_once_by_a_process_that_remembers_it(locked_phone, token_a, monkeypatch):
    phone, client, _enrolled = locked_phone
    checkin(client)
    assert checkin(client).status_code == 200  # answered from this process's memory
    # The phone enrols again through another process, which cannot tell this one's memory.
    monkeypatch.setattr(checkin_cache, "_local_forget", lambda device_ids: None)
    again = enroll(phone.imei, token_a)

    assert checkin(client).status_code == 401
    assert checkin(as_phone(again["credential"])).status_code == 200


def test_every_check_in_answered_from_memory_is_counted_across_processes(locked_phone, settings, monkeypatch):
    """Two server processes each remembering the phone still let it through only DEVICE_API_RATE times."""
    phone, client, _enrolled = locked_phone
    settings.DEVICE_API_RATE = "10/hour"  # one window for the whole test
    settings.CHECKIN_LOCAL_SECONDS = 10.0
    redis = checkin_cache._client()[0]
    for key in redis.keys(f"{checkin_cache.PREFIX}rate:{phone.pk}:*"):
        redis.delete(key)
    checkin(client)  # fills the Redis record
    memories = [{}, {}]  # what each of two gunicorn workers keeps in memory

    answers = []
    for turn in range(30):
        monkeypatch.setattr(checkin_cache, "_local", memories[turn % 2])
        answers.append(checkin(client).status_code)

    # The fill above was the first request of the window; nine more get through, wherever answered.
    assert answers.count(200) == 9, answers
    assert answers[:9] == [200] * 9 and set(answers[9:]) == {429}
    assert all(memories), "both processes answered from memory"


def test_check_ins_answered_from_memory_are_counted_when_entries_are_evicted(locked_phone, settings, token_a):
    """A full memory drops old entries; the requests they answered still count."""
    phone, client, _enrolled = locked_phone
    other = DeviceFactory(provider=phone.provider)
    other_client = as_phone(enroll(other.imei, token_a)["credential"])
    checkin(other_client, last_seq=1, state="unlocked")
    settings.DEVICE_API_RATE = "6/hour"
    settings.CHECKIN_LOCAL_SECONDS = 10.0
    settings.CHECKIN_LOCAL_ENTRIES = 1  # two phones take turns in one entry
    redis = checkin_cache._client()[0]
    for key in redis.keys(f"{checkin_cache.PREFIX}rate:{phone.pk}:*"):
        redis.delete(key)

    answers = []
    for _ in range(12):
        answers.append(checkin(client).status_code)
        answers.append(checkin(client).status_code)
        checkin(other_client, last_seq=1, state="unlocked")

    assert answers.count(200) == 6, answers


def test_an_old_credential_stops_working_after_the_phone_enrols_again(locked_phone, token_a):
    phone, client, _enrolled = locked_phone
    checkin(client)
    assert checkin(client).status_code == 200  # cached

    again = enroll(phone.imei, token_a)  # factory reset

    assert checkin(client).status_code == 401
    assert checkin(as_phone(again["credential"])).status_code == 200


def test_a_phone_reporting_a_newer_command_goes_to_the_database_which_records_it(locked_phone):
    phone, client, enrolled = locked_phone
    checkin(client)
    checkin(client)
    unlock = device_states_apply(changes=[StateChange(device_id=phone.pk, state="unlocked", reason="Paid")])[0]
    checkin(client)  # answered seq 3; the phone applies it, its ack is lost

    response = checkin(client, last_seq=unlock.seq, state="unlocked")

    assert response.status_code == 200
    phone.refresh_from_db()
    assert (phone.reported_seq, phone.reported_state) == (unlock.seq, "unlocked")


def test_the_rate_limit_counts_each_check_in_once_whichever_path_answers(locked_phone, settings):
    phone, client, _enrolled = locked_phone
    settings.DEVICE_API_RATE = "4/min"
    # The acknowledgement in the fixture was counted in the old window's key; use a fresh device window.
    checkin_cache._client()[0].delete(*checkin_cache._client()[0].keys(f"{checkin_cache.PREFIX}rate:{phone.pk}:*"))

    answers = [checkin(client).status_code for _ in range(6)]

    assert answers == [200, 200, 200, 200, 429, 429]
    throttled = checkin(client)
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert "throttled" in throttled.json()["detail"]


def test_check_in_times_are_buffered_and_written_forward_by_the_flush(locked_phone):
    phone, client, _enrolled = locked_phone
    checkin(client)  # database path: written at once
    phone.refresh_from_db()
    first_seen = phone.last_checkin_at
    device_checkins_flush()  # whatever other tests left buffered

    checkin_cache._local.clear()
    checkin(client, app_version="1.1")  # from Redis: buffered
    phone.refresh_from_db()
    assert phone.last_checkin_at == first_seen and phone.app_version == "1.0"

    assert device_checkins_flush() >= 1
    phone.refresh_from_db()
    assert phone.last_checkin_at > first_seen and phone.app_version == "1.1"
    assert timezone.now() - phone.last_checkin_at < timezone.timedelta(seconds=30)

    # An older buffered time never moves it back; a credential replaced since is ignored.
    newest = phone.last_checkin_at
    redis = checkin_cache._client()[0]
    redis.hset(checkin_cache.SEEN, phone.pk, f"{int((time.time() - 3600) * 1000)}|{phone.credential_digest}|0.9")
    redis.hset(checkin_cache.SEEN, phone.pk + 10**9, f"{int(time.time() * 1000)}|{'0' * 64}|x")
    device_checkins_flush()
    phone.refresh_from_db()
    assert phone.last_checkin_at == newest and phone.app_version == "1.1"


def test_with_redis_unreachable_check_ins_are_answered_from_the_database(locked_phone, settings):
    phone, client, enrolled = locked_phone
    checkin(client)
    checkin_cache._local.clear()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    response = checkin(client)

    assert response.status_code == 200
    command = read_command(response.json()["envelope"], first_trust(enrolled["key_statements"])[0])
    assert command["seq"] == 2


def test_a_generation_whose_key_lapsed_never_matches_an_old_record_again(locked_phone):
    """A day without changes lets the device's generation key expire; the next change must still be seen."""
    phone, client, enrolled = locked_phone
    checkin(client)
    checkin_cache._local.clear()
    redis = checkin_cache._client()[0]
    generation = f"{checkin_cache.PREFIX}gen:{phone.pk}"
    redis.set(generation, 1)  # the device's first change, long ago
    checkin(client)  # the record is refilled with generation 1
    checkin_cache._local.clear()
    redis.delete(generation)  # a quiet day: the key lapsed

    unlock = device_states_apply(changes=[StateChange(device_id=phone.pk, state="unlocked", reason="Paid")])[0]

    command = read_command(checkin(client).json()["envelope"], first_trust(enrolled["key_statements"])[0])
    assert (command["seq"], command["state"]) == (unlock.seq, "unlocked")


def test_a_replaced_credential_cannot_use_up_the_phones_rate_limit(locked_phone, token_a, settings):
    phone, old_client, _enrolled = locked_phone
    checkin(old_client)
    again = enroll(phone.imei, token_a)  # factory reset: a new credential
    settings.DEVICE_API_RATE = "3/min"
    redis = checkin_cache._client()[0]
    for key in redis.keys(f"{checkin_cache.PREFIX}rate:{phone.pk}:*"):
        redis.delete(key)

    refused = [checkin(old_client).status_code for _ in range(5)]
    answered = checkin(as_phone(again["credential"])).status_code

    assert set(refused) == {401} and answered == 200
