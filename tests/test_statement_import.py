"""A finance officer imports a bank statement: every line once, credits become payments, nothing unexplained."""

import datetime as dt
import json
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from devices.models import Device
from payments.locks.services import lock_sweep
from payments.models import LockPolicy, Payment, StatementLine
from payments.statements.imports import statement_import_create, statement_import_run
from tests.factories import CustomerFactory, ProviderFactory, make_contract
from tests.samples import SAMPLES  # noqa: E402

needs_samples = pytest.mark.skipif(not SAMPLES.exists(), reason="the shared sample statements are not on this machine")

HEADER = (
    "Kontonummer;Datum/Zeit;Buchungstag;Wertstellung;Soll/Haben;Buchungsschlüssel;Buchungsart;"
    "Empfänger/Auftraggeber Name;Empfänger/Auftraggeber IBAN;Empfänger/Auftraggeber BIC;Glaeubiger-ID;"
    "Mandatsreferenz;Mandatsdatum;" + ";".join(f"Vwz.{i}" for i in range(18)) + ";End-to-End-Identifikation"
)


def csv_line(amount: str, purpose: str, e2e: str, day: dt.date) -> str:
    d = day.strftime("%d.%m.%Y")
    empty = ";" * 17
    return f"1234567890;{d} 09:00;{d};{d};{amount};166;Gutschrift;Max Muster;DE1;BIC;;;;{purpose}{empty};{e2e}"


@pytest.fixture
def berlin(db):
    provider = ProviderFactory(
        name="Berlin Phones", slug="berlin", country="DE", currency="EUR", time_zone="Europe/Berlin", languages=["en"]
    )
    LockPolicy.objects.create(provider=provider, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    return provider


def test_a_credit_quoting_the_contract_unlocks_the_phone_and_a_reimport_creates_nothing(berlin, finance_a):
    today = berlin.today()
    contract = make_contract(
        berlin,
        number="BP-0007",
        customer=CustomerFactory(provider=berlin, phone="+4915112345678"),
        first_due_date=today - dt.timedelta(days=40),
    )
    lock_sweep()
    contract.refresh_from_db()
    assert contract.lock_state == "locked"
    raw = "\n".join(
        [
            HEADER,
            csv_line("16666,66", "Rate bp 7", "E2E-1", today),
            csv_line("-12,00", "Kontofuehrung", "E2E-2", today),
        ]
    ).encode("utf-8")

    record = statement_import_create(provider=berlin, filename="1822direkt.csv", raw=raw, actor=finance_a)
    record = statement_import_run(import_id=record.pk, actor=finance_a)
    summary = record.summary
    assert (summary["rows"], summary["credits"], summary["debits"], summary["matched"]) == (2, 1, 1, 1)
    payment = Payment.objects.get(provider=berlin)
    assert (payment.external_id, payment.amount, payment.match_rule) == (
        "E2E-1",
        Decimal("16666.66"),
        "reference_normalised",
    )
    assert Device.objects.get(pk=contract.device_id).desired_state == "unlocked"
    assert StatementLine.objects.get(direction="debit").note.startswith("Debit or return")

    again = statement_import_create(provider=berlin, filename="1822direkt.csv", raw=raw, actor=finance_a)
    again = statement_import_run(import_id=again.pk, actor=finance_a)
    assert again.summary["duplicates"] == 2 and Payment.objects.count() == 1


def test_a_file_that_cannot_be_read_fails_with_the_reason_and_changes_nothing(berlin, finance_a):
    record = statement_import_create(
        provider=berlin, filename="x.xml", raw=b"<Document><BkToCstmrStmt>", actor=finance_a
    )
    record = statement_import_run(import_id=record.pk)
    assert record.status == "failed" and record.error
    assert not StatementLine.objects.exists()


@needs_samples
@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(SAMPLES)) for d in ("mt940", "camt", "csv") for p in (SAMPLES / d).glob("*.*"))
)
def test_every_sample_imports_with_no_unexplained_row(db, path):
    from payments.statements.parsers.detect import parse_statement

    raw = (SAMPLES / path).read_bytes()
    parsed = parse_statement(raw, Path(path).name)
    currency = parsed.currency or (parsed.lines[0].currency if parsed.lines else "EUR")
    provider = ProviderFactory(currency=currency, country="DE", time_zone="Europe/Berlin", languages=["en"])
    out = StringIO()
    call_command("import_statement", str(SAMPLES / path), "--provider", provider.slug, stdout=out)
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert summary["status"] == "done", summary
    lines = StatementLine.objects.filter(provider=provider)
    # Each row is a stored line or an error with its reason; each stored credit is a payment or says why not.
    assert summary["rows"] == lines.count() + summary["errors"] + summary["duplicates"]
    for line in lines:
        assert line.payment_id or line.note, (path, line.line_no)
    assert summary["credits"] == summary["matched"] + summary["unmatched"] + summary["not_credited"] + sum(
        1 for line in lines if line.direction == "credit" and not line.is_return and line.note.startswith("Debit")
    )


@needs_samples
def test_the_zenith_bank_statement_in_naira(db):
    provider = ProviderFactory(currency="NGN", country="NG", time_zone="Africa/Lagos", languages=["en"])
    out = StringIO()
    call_command("import_statement", str(SAMPLES / "mt940/ng_zenith_bank.txt"), "--provider", provider.slug, stdout=out)
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert {k: summary[k] for k in ("rows", "credits", "debits", "duplicates", "errors", "unmatched")} == {
        "rows": 8,
        "credits": 1,
        "debits": 7,
        "duplicates": 0,
        "errors": 0,
        "unmatched": 1,
    }
    payment = Payment.objects.get(provider=provider)
    assert payment.amount == Decimal("220000.00") and payment.status == "unmatched"


def test_a_finance_officer_uploads_a_statement_in_the_portal_and_follows_it(berlin, as_user, agent_a):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from payments.models import StatementImport
    from tests.factories import UserFactory

    finance = UserFactory(username="finance.berlin", organisation=berlin, role="finance")
    client = as_user(finance)
    raw = "\n".join([HEADER, csv_line("25,00", "thanks", "E2E-9", berlin.today())]).encode("utf-8")
    response = client.post("/contracts/statements/", {"file": SimpleUploadedFile("export.csv", raw)})
    record = StatementImport.objects.get(provider=berlin)
    assert response.status_code == 302 and response["Location"] == f"/contracts/statements/{record.pk}/"
    statement_import_run(import_id=record.pk)  # what the worker does (eager without a broker)
    page = client.get(f"/contracts/statements/{record.pk}/").content.decode()
    assert "export.csv" in page and "E2E-9" in page and "Unmatched" in page
    client.logout()
    assert as_user(agent_a).get(f"/contracts/statements/{record.pk}/").status_code == 404  # another provider's
    assert as_user(agent_a).get("/contracts/statements/").status_code == 403  # agents do not import


# --- the set-based path credits exactly as payment_ingest does --------------------------------


def _berlin_twin(slug: str):
    provider = ProviderFactory(
        name=f"Berlin {slug}", slug=slug, country="DE", currency="EUR", time_zone="Europe/Berlin", languages=["en"]
    )
    LockPolicy.objects.create(provider=provider, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    today = provider.today()
    for i in range(12):
        device = Device.objects.create(provider=provider, imei=f"35{i:012d}"[:14] + "0")
        make_contract(
            provider,
            number=f"BP-{i:04d}",
            device=device,
            customer=CustomerFactory(provider=provider, phone=f"+491511234{i:04d}"),
            cash_price=Decimal("1300.00"),
            down_payment=Decimal("100.00"),
            installment_count=4,
            first_due_date=today - dt.timedelta(days=45 if i % 2 else 5),
        )
    return provider


def _statement(day: dt.date) -> bytes:
    """Credits quoting numbers as payers type them, an IMEI, nothing, overpayments, debits,
    a repeated entry, and one transaction id sent twice with different amounts."""
    rows = [HEADER]
    for i in range(12):
        purpose = [f"BP-{i:04d}", f"bp {i}", f"Rate BP/{i:04d} danke", "Danke"][i % 4]
        rows.append(csv_line(f"{150 + 40 * i},00", purpose, f"E2E-{i}", day))
        rows.append(csv_line(f"{90 + i},50", f"BP-{i:04d}", f"E2E-{i}-b", day))  # a second payment, same contract
    rows.append(csv_line("1400,00", "BP-0003", "E2E-over", day))  # more than the whole schedule: paid off + credit
    rows.append(csv_line("25,00", "Handy 350000000000070", "E2E-imei", day))  # an IMEI only
    rows.append(csv_line("-12,00", "Kontofuehrung", "E2E-fee", day))  # a debit
    rows.append(csv_line("33,00", "BP-0005", "E2E-x", day))
    rows.append(csv_line("34,00", "BP-0005", "E2E-x", day))  # same id, other amount: a conflict
    rows.append(csv_line("0,00", "BP-0006", "E2E-zero", day))  # refused: not more than zero
    return "\n".join(rows).encode("utf-8")


def _outcome(provider) -> dict:
    from payments.models import Contract, Installment

    return {
        "lines": sorted(
            (line.line_no, line.note, line.payment.amount if line.payment else None)
            for line in StatementLine.objects.filter(provider=provider).select_related("payment")
        ),
        "payments": sorted(
            (p.external_id, p.amount, p.status, p.contract.number if p.contract else None, p.match_rule)
            for p in Payment.objects.filter(provider=provider).select_related("contract")
        ),
        "installments": sorted(
            (i.contract.number, i.number, i.amount_paid)
            for i in Installment.objects.filter(contract__provider=provider).select_related("contract")
        ),
        "credit": sorted(
            (a.contract.number, a.amount)
            for a in provider_allocations(provider).filter(installment__isnull=True).select_related("contract")
        ),
        "contracts": sorted((c.number, c.status, c.lock_state) for c in Contract.objects.filter(provider=provider)),
    }


def provider_allocations(provider):
    from payments.models import PaymentAllocation

    return PaymentAllocation.objects.filter(contract__provider=provider)


def test_batches_credit_exactly_as_one_payment_at_a_time(db, monkeypatch):
    """The same statement imported set-based and line by line (payment_ingest) ends the same."""
    from django.db import IntegrityError

    import payments.statements.imports

    batched, one_by_one = _berlin_twin("batched"), _berlin_twin("one-by-one")
    lock_sweep()
    raw = _statement(batched.today())

    def run(provider):
        return statement_import_run(
            import_id=statement_import_create(provider=provider, filename="s.csv", raw=raw, actor=None).pk
        )

    first, again = run(batched), run(batched)

    def refuse(**kwargs):
        raise IntegrityError("force the line-by-line path")

    monkeypatch.setattr(payments.statements.imports, "statement_lines_credit", refuse)
    single = run(one_by_one)

    summary = {k: v for k, v in first.summary.items() if k != "error_lines"}
    assert summary == {k: v for k, v in single.summary.items() if k != "error_lines"}
    assert (summary["matched"], summary["unmatched"], summary["not_credited"]) == (24, 3, 1)
    assert (summary["debits"], summary["duplicates"], summary["errors"]) == (1, 0, 1)  # the zero amount: unreadable
    assert first.summary["error_lines"][0]["reason"].startswith("amount is zero")
    assert again.summary["duplicates"] == summary["rows"] - summary["errors"]
    ours, theirs = _outcome(batched), _outcome(one_by_one)
    assert ours == theirs
    assert ("BP-0003", "paid_off") in {(n, s) for n, s, _lock in ours["contracts"]}
    assert ours["credit"], "the overpayment is held as credit"
    assert any(rule == "imei" for *_rest, rule in ours["payments"])


@needs_samples
def test_a_camt_file_on_one_line_is_credited_in_batches_all_the_same(db, monkeypatch):
    """Every entry of a minified camt file starts on line 1: the batch must not mix them up."""
    import re

    import payments.statements.imports
    from payments.statements.parsers.detect import parse_statement

    raw = re.sub(rb">\s+<", b"><", (SAMPLES / "camt/ch_postfinance_camt053_v04.xml").read_bytes())
    parsed = parse_statement(raw, "one-line.xml")
    assert len({line.line_no for line in parsed.lines}) == 1 < len(parsed.lines)
    provider = ProviderFactory(currency=parsed.currency or "CHF", country="CH", time_zone="Europe/Zurich")

    def no_fallback(**kwargs):
        raise AssertionError("the batch fell back to line-by-line import")

    monkeypatch.setattr(payments.statements.imports, "_import_line", no_fallback)
    record = statement_import_run(
        import_id=statement_import_create(provider=provider, filename="one-line.xml", raw=raw, actor=None).pk
    )

    assert record.status == "done", record.error
    lines = list(StatementLine.objects.filter(provider=provider))
    assert len(lines) == len(parsed.lines)
    assert all(line.payment_id or line.note for line in lines)
    credited = [line for line in lines if line.payment_id]
    assert len({line.payment_id for line in credited}) == len(credited)  # one payment per credited entry


# --- the API: a provider's finance system uploads its statements --------------------------------


def test_a_providers_system_uploads_a_statement_through_the_api_and_follows_it(berlin):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.test import APIClient

    from portal.services import api_key_create

    today = berlin.today()
    make_contract(berlin, number="BP-0042", first_due_date=today - dt.timedelta(days=10))
    raw = "\n".join([HEADER, csv_line("500,00", "Rate BP-0042", "E2E-API-1", today)]).encode("utf-8")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(provider=berlin, name='erp')[1]}")

    accepted = api.post("/api/v1/statements/", {"file": SimpleUploadedFile("june.csv", raw)}, format="multipart")
    assert accepted.status_code == 202, accepted.json()
    assert accepted.json()["status"] == "pending"
    statement_import_run(import_id=accepted.json()["id"])  # what the worker does once the upload commits
    followed = api.get(f"/api/v1/statements/{accepted.json()['id']}/").json()
    assert followed["status"] == "done"
    assert (followed["summary"]["credits"], followed["summary"]["matched"]) == (1, 1)
    assert [s["id"] for s in api.get("/api/v1/statements/").json()["results"]] == [accepted.json()["id"]]

    empty = api.post("/api/v1/statements/", {"file": SimpleUploadedFile("e.csv", b"")}, format="multipart")
    assert empty.status_code == 400 and "file" in empty.json()["errors"]


def test_another_providers_statement_import_is_404_in_the_api(berlin, api_b):
    record = statement_import_create(provider=berlin, filename="s.sta", raw=b":20:X\n", actor=None)
    assert api_b.get(f"/api/v1/statements/{record.pk}/").status_code == 404
    assert api_b.get("/api/v1/statements/").json()["results"] == []


# --- every import ends done or failed with the reason ---------------------------------------------


@pytest.fixture
def celery_eager():
    """No broker (the embedded default): a queued task runs in-process, as on a bare machine."""
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def camt_declaring(encoding: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="{encoding}"?>\n'
        '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.04"><BkToCstmrStmt>'
        "<Stmt><Id>1</Id></Stmt></BkToCstmrStmt></Document>\n"
    ).encode("ascii")


@pytest.mark.parametrize("encoding", ["UTF-7", "x-no-such-encoding", "UTF-32"])
def test_a_camt_file_in_an_encoding_that_cannot_be_read_fails_with_the_reason(berlin, encoding):
    record = statement_import_create(provider=berlin, filename="s.xml", raw=camt_declaring(encoding), actor=None)
    record = statement_import_run(import_id=record.pk)
    assert record.status == "failed" and record.finished_at is not None
    assert record.error.startswith(f"the XML declares the encoding '{encoding}', which cannot be read")
    assert "export the statement again as UTF-8" in record.error


def test_an_unexpected_error_ends_the_import_failed_with_a_readable_reason_never_running(berlin, caplog):
    from portal.models import AuditEvent

    record = statement_import_create(provider=berlin, filename="s.sta", raw=b":20:X\n", actor=None)
    record.file.storage.delete(record.file.name)  # the stored upload is lost (a disk replaced, a bad restore)
    record = statement_import_run(import_id=record.pk)
    assert record.status == "failed" and record.finished_at is not None
    assert record.error == (
        "The import stopped on an unexpected error (FileNotFoundError). Nothing was recorded. "
        f"The operators have the details in the log (statement import {record.pk})."
    )
    assert "FileNotFoundError" in caplog.text  # the details, for the operators
    event = AuditEvent.objects.get(action="statement.failed", object_id=str(record.pk))
    assert event.after == {"error": record.error}
    assert statement_import_run(import_id=record.pk).status == "failed"  # finished: left as it is


def test_an_upload_that_cannot_be_read_shows_the_reason_in_the_portal_and_the_api_never_a_500(
    berlin, client, celery_eager, django_capture_on_commit_callbacks
):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.test import APIClient

    from payments.models import StatementImport
    from portal.services import api_key_create
    from tests.conftest import signed_in
    from tests.factories import UserFactory

    portal = signed_in(client, UserFactory(username="finance.berlin", organisation=berlin, role="finance"))
    with django_capture_on_commit_callbacks(execute=True):
        response = portal.post(
            "/contracts/statements/", {"file": SimpleUploadedFile("utf7.xml", camt_declaring("UTF-7"))}
        )
    record = StatementImport.objects.get(filename="utf7.xml")
    assert response.status_code == 302 and response["Location"] == f"/contracts/statements/{record.pk}/"
    page = portal.get(response["Location"])
    assert page.status_code == 200
    body = page.content.decode()
    assert "The file could not be imported" in body and "the XML declares the encoding &#x27;UTF-7&#x27;" in body

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(provider=berlin, name='erp')[1]}")
    with django_capture_on_commit_callbacks(execute=True):
        upload = {"file": SimpleUploadedFile("utf7-api.xml", camt_declaring("UTF-7"))}
        accepted = api.post("/api/v1/statements/", upload, format="multipart")
    assert accepted.status_code == 202
    followed = api.get(f"/api/v1/statements/{accepted.json()['id']}/").json()
    assert followed["status"] == "failed" and "UTF-7" in followed["error"]


# --- waiting and lost imports are queued again, and run once -----------------------------------


def _upload(provider, name: str = "s.csv", e2e: str = "E2E-Q"):
    raw = "\n".join([HEADER, csv_line("25,00", "Danke", e2e, provider.today())]).encode("utf-8")
    return statement_import_create(provider=provider, filename=name, raw=raw, actor=None)


def test_an_import_that_never_reached_the_broker_is_queued_by_the_periodic_job(berlin, celery_eager):
    from payments.statements.imports import statement_imports_requeue

    record = _upload(berlin)  # stored; its task never reached a broker (queued_at is empty)
    assert record.status == "pending" and record.queued_at is None

    assert statement_imports_requeue() == 1
    record.refresh_from_db()
    assert record.status == "done" and record.attempts == 1 and record.summary["credits"] == 1
    assert statement_imports_requeue() == 0  # nothing waits any more


def test_a_queued_import_is_queued_again_only_when_its_task_may_be_lost(berlin, celery_eager):
    from django.utils import timezone

    from payments.models import StatementImport
    from payments.statements.imports import REQUEUE_PENDING_AFTER, statement_imports_requeue

    record = _upload(berlin)
    StatementImport.objects.filter(pk=record.pk).update(queued_at=timezone.now())  # its task is in the queue
    assert statement_imports_requeue() == 0
    later = timezone.now() + REQUEUE_PENDING_AFTER + dt.timedelta(seconds=1)  # a restarted Redis lost it
    assert statement_imports_requeue(now=later) == 1
    record.refresh_from_db()
    assert record.status == "done"


def test_an_import_whose_worker_died_is_run_again_once_and_a_live_one_is_left_alone(berlin, celery_eager, settings):
    from django.utils import timezone

    from payments.models import StatementImport
    from payments.statements.imports import statement_imports_requeue

    now = timezone.now()
    limit = dt.timedelta(seconds=settings.STATEMENT_IMPORT_HARD_LIMIT_SECONDS)
    live, dead = _upload(berlin, "live.csv", "E2E-LIVE"), _upload(berlin, "dead.csv", "E2E-DEAD")
    # Claimed by runs as the worker does: one just now, one before the hard limit (its worker was killed).
    StatementImport.objects.filter(pk=live.pk).update(status="running", started_at=now, attempts=1)
    StatementImport.objects.filter(pk=dead.pk).update(
        status="running", started_at=now - limit - dt.timedelta(minutes=2), attempts=1
    )

    assert statement_import_run(import_id=live.pk).status == "running"  # a duplicate task: not run twice
    assert statement_imports_requeue() == 1
    live.refresh_from_db()
    dead.refresh_from_db()
    assert live.status == "running" and live.attempts == 1
    assert dead.status == "done" and dead.attempts == 2
    assert list(Payment.objects.filter(provider=berlin).values_list("external_id", flat=True)) == ["E2E-DEAD"]


def test_an_import_left_running_for_good_by_the_old_code_ends_with_its_reason(berlin, celery_eager, settings):
    """A UTF-7 camt file left its import "running" with no start recorded; the periodic job finishes it."""
    from django.utils import timezone

    from payments.models import StatementImport
    from payments.statements.imports import statement_imports_requeue

    stuck = statement_import_create(provider=berlin, filename="utf7.xml", raw=camt_declaring("UTF-7"), actor=None)
    fresh = _upload(berlin)  # uploaded just now and being run: not stuck, left alone
    long_ago = timezone.now() - dt.timedelta(seconds=settings.STATEMENT_IMPORT_HARD_LIMIT_SECONDS + 600)
    StatementImport.objects.filter(pk=stuck.pk).update(status="running", created_at=long_ago)
    StatementImport.objects.filter(pk=fresh.pk).update(status="running")

    assert statement_imports_requeue() == 1
    stuck.refresh_from_db()
    fresh.refresh_from_db()
    assert stuck.status == "failed" and "declares the encoding 'UTF-7'" in stuck.error
    assert fresh.status == "running"


def test_an_import_whose_runs_keep_dying_ends_failed_instead_of_looping(berlin, celery_eager, settings):
    from django.utils import timezone

    from payments.models import StatementImport
    from payments.statements.imports import MAX_ATTEMPTS, statement_imports_requeue
    from portal.models import AuditEvent

    record = _upload(berlin)
    long_ago = timezone.now() - dt.timedelta(seconds=settings.STATEMENT_IMPORT_HARD_LIMIT_SECONDS + 600)
    StatementImport.objects.filter(pk=record.pk).update(status="running", started_at=long_ago, attempts=MAX_ATTEMPTS)

    assert statement_imports_requeue() == 0
    record.refresh_from_db()
    assert record.status == "failed" and record.finished_at is not None
    assert record.error.startswith(f"The import was interrupted {MAX_ATTEMPTS} times without finishing")
    assert AuditEvent.objects.filter(action="statement.failed", object_id=str(record.pk)).count() == 1
    assert statement_import_run(import_id=record.pk).status == "failed"  # and no run takes it again


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_runs_of_the_same_import_at_once_import_it_once(berlin):
    import threading

    from django.db import connection

    from portal.models import AuditEvent

    record = _upload(berlin)
    barrier = threading.Barrier(2)
    outcomes = []

    def run():
        try:
            barrier.wait(5)
            outcomes.append(statement_import_run(import_id=record.pk).status)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    record.refresh_from_db()
    assert record.status == "done" and record.attempts == 1
    assert sorted(outcomes) in (["done", "running"], ["done", "done"])  # the loser returns the record as it stood
    assert AuditEvent.objects.filter(action="statement.import", object_id=str(record.pk)).count() == 1
    assert Payment.objects.filter(provider=berlin).count() == 1
