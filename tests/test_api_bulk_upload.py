"""A provider loads its device registry from a CSV through the API.

Stories:
* ``all_or_nothing`` (the default): one bad line and nothing is created; the 422
  report names every bad line with its line number, column and reason, so the
  file can be fixed in one pass;
* ``valid_rows_only``: the good lines are created, the bad ones reported;
* an IMEI twice in the same file, or already registered, is a reported line;
* a file that cannot be read as a whole (no imei column, unknown column, not
  UTF-8, too large, too many rows) is a 400 saying what is wrong with it;
* a full 100,000-row file goes through in one request in reasonable time.
"""

from __future__ import annotations

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from stdnum import luhn

from devices.models import Device
from portal.audit_verify import audit_verify_chain
from portal.models import AuditEvent
from tests.factories import DeviceFactory, make_imei

BULK = "/api/v1/devices/bulk/"
BAD_LUHN = "490154203237517"


def upload(client, text: str | bytes, mode: str | None = None, name: str = "devices.csv"):
    raw = text.encode() if isinstance(text, str) else text
    data = {"file": SimpleUploadedFile(name, raw, content_type="text/csv")}
    if mode:
        data["mode"] = mode
    return client.post(BULK, data, format="multipart")


def csv_of(*rows: str, header: str = "imei,serial_number,maker,model") -> str:
    return "\n".join([header, *rows]) + "\n"


@pytest.fixture
def three_good_one_bad():
    """Line 2, 3 and 5 are good; line 4 has a mistyped IMEI."""
    good = [make_imei() for _ in range(3)]
    text = csv_of(
        f"{good[0]},SN1,Samsung,A15",
        f"{good[1]},SN2,Tecno,Spark 20",
        f"{BAD_LUHN},SN3,Nokia,G22",
        f"{good[2]},SN4,Itel,A70",
    )
    return good, text


def test_all_or_nothing_with_one_bad_line_creates_nothing_and_names_the_line(api_a, three_good_one_bad):
    _good, text = three_good_one_bad
    response = upload(api_a, text)  # all_or_nothing is the default
    assert response.status_code == 422
    report = response.json()
    assert report["mode"] == "all_or_nothing"
    assert (report["rows"], report["created"], report["rejected"]) == (4, 0, 1)
    [error] = report["errors"]
    assert error["line"] == 4 and error["field"] == "imei"
    assert "Luhn" in error["message"]
    assert not Device.objects.exists()
    assert not AuditEvent.objects.filter(action="device.create").exists()


def test_valid_rows_only_creates_the_good_lines_and_reports_the_bad(api_a, provider_a, three_good_one_bad):
    good, text = three_good_one_bad
    response = upload(api_a, text, mode="valid_rows_only")
    assert response.status_code == 201
    report = response.json()
    assert (report["rows"], report["created"], report["rejected"]) == (4, 3, 1)
    assert [e["line"] for e in report["errors"]] == [4]
    stored = dict(Device.objects.filter(provider=provider_a).values_list("imei", "maker"))
    assert stored == {good[0]: "Samsung", good[1]: "Tecno", good[2]: "Itel"}
    # Every created device is on the audit trail, and the chain still verifies.
    assert AuditEvent.objects.filter(action="device.create", organisation=provider_a).count() == 3
    assert audit_verify_chain().ok


def test_a_clean_file_is_created_whole(api_a, provider_a):
    imeis = [make_imei() for _ in range(3)]
    response = upload(api_a, csv_of(*(f"{i},,Samsung,A05" for i in imeis)))
    assert response.status_code == 201
    assert response.json()["created"] == 3 and response.json()["errors"] == []
    assert set(Device.objects.filter(provider=provider_a).values_list("imei", flat=True)) == set(imeis)


def test_every_bad_line_is_reported_with_its_column_and_reason(api_a, provider_a):
    registered = DeviceFactory(provider=provider_a).imei
    dup = make_imei()
    text = csv_of(
        f"{dup},,Samsung,A15",  # line 2: fine
        f"{dup},,Samsung,A15",  # line 3: same IMEI again in this file
        f"{registered},,Tecno,Spark",  # line 4: already in the registry
        "3512345,,Tecno,Spark",  # line 5: too short
        ",,Tecno,Spark",  # line 6: no IMEI
        f"{make_imei()},,{'M' * 65},Spark",  # line 7: maker too long
        f"{make_imei()},,Tecno,Spark,extra",  # line 8: one column too many
    )
    report = upload(api_a, text).json()
    found = {(e["line"], e["field"]): e["message"] for e in report["errors"]}
    assert found[(3, "imei")] == "Duplicate of line 2 in this file."
    assert "Already registered" in found[(4, "imei")]
    assert "15 digits" in found[(5, "imei")]
    assert "required" in found[(6, "imei")]
    assert "64" in found[(7, "maker")]
    assert "more columns than the header" in found[(8, None)]
    assert (3, "imei") in found and (2, "imei") not in found
    assert report["rejected"] == 6


def test_imeis_as_printed_on_the_box_are_accepted_and_stored_as_digits(api_a, provider_a):
    imei = make_imei()
    spaced = f"{imei[:2]} {imei[2:8]} {imei[8:14]} {imei[14]}"
    dashed = make_imei()
    text = csv_of(f"{spaced},,Samsung,A15", f"{dashed[:8]}-{dashed[8:]},,Samsung,A15")
    response = upload(api_a, text)
    assert response.status_code == 201, response.json()
    assert set(Device.objects.values_list("imei", flat=True)) == {imei, dashed}


def test_a_semicolon_file_with_a_byte_order_mark_and_any_header_case_is_read(api_a, provider_a):
    imei = make_imei()
    text = "\ufeffIMEI;Maker\r\n" + f"{imei};Xiaomi\r\n"
    assert upload(api_a, text).status_code == 201
    assert Device.objects.get(provider=provider_a).maker == "Xiaomi"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("serial_number,maker\nSN1,Samsung\n", "no imei column"),
        ("imei,colour\n490154203237518,red\n", "Unknown column(s) colour"),
        ("imei,maker,maker\n490154203237518,Samsung,Tecno\n", "maker appear more than once"),
        ("imei,,maker\n490154203237518,,Samsung\n", "Column(s) 2 of the header have no name"),
        ("imei\n", "no rows"),
        ("", "empty"),
        ("imei,maker\n490154203237518,Ni\xf1o\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_a_file_that_cannot_be_read_is_a_400_saying_why(api_a, content, reason):
    response = upload(api_a, content)
    assert response.status_code == 400
    body = response.json()
    assert any(reason in m for m in body["errors"]["file"]), body
    assert not Device.objects.exists()


def test_limits_on_size_and_rows_are_a_400(api_a, settings):
    settings.BULK_UPLOAD_MAX_ROWS = 2
    response = upload(api_a, csv_of(*(make_imei() for _ in range(3)), header="imei"))
    assert response.status_code == 400
    assert "more than 2 rows" in response.json()["errors"]["file"][0]

    settings.BULK_UPLOAD_MAX_BYTES = 1024
    response = upload(api_a, csv_of(*(make_imei() for _ in range(100)), header="imei"))
    assert response.status_code == 400
    assert "larger than" in response.json()["errors"]["file"][0]
    assert not Device.objects.exists()


def test_a_wrong_mode_or_a_missing_file_is_a_400_on_that_field(api_a):
    response = upload(api_a, csv_of(make_imei(), header="imei"), mode="best_effort")
    assert response.status_code == 400 and "mode" in response.json()["errors"]
    response = api_a.post(BULK, {"mode": "valid_rows_only"}, format="multipart")
    assert response.status_code == 400 and "file" in response.json()["errors"]


def test_another_providers_registry_does_not_count_as_already_registered(api_a, provider_a, provider_b):
    theirs = DeviceFactory(provider=provider_b).imei
    response = upload(api_a, csv_of(f"{theirs},,Samsung,A15"))
    assert response.status_code == 201
    assert Device.objects.filter(imei=theirs).count() == 2


def test_an_imei_registered_by_a_concurrent_request_is_a_400_not_a_server_error(api_a, provider_a):
    imei = make_imei()
    raced = []

    def another_request_wins(execute, sql, params, many, context):
        # Between this upload's duplicate check and its insert, the same IMEI is registered.
        if not raced and sql.startswith("INSERT") and "devices_device" in sql:
            raced.append(True)
            DeviceFactory(provider=provider_a, imei=imei)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(another_request_wins):
        response = upload(api_a, csv_of(f"{imei},,Samsung,A15", f"{make_imei()},,Samsung,A15"))
    assert raced
    assert response.status_code == 400
    assert "registered some of these IMEIs meanwhile" in response.json()["errors"]["file"][0]
    assert not AuditEvent.objects.filter(action="device.create").exists()


@pytest.mark.slow
def test_a_100000_row_file_goes_through_in_one_request(api_a, provider_a, settings):
    rows = settings.BULK_UPLOAD_MAX_ROWS
    assert rows == 100_000
    # A valid IMEI per row: a 14-digit body from the row number plus its Luhn digit.
    bodies = (f"86{n:012d}" for n in range(rows))
    text = csv_of(*(f"{b}{luhn.calc_check_digit(b)},SN{n:07d},Transsion,Spark 20" for n, b in enumerate(bodies)))

    statements = []

    def count(execute, sql, params, many, context):
        statements.append(sql[:20])
        return execute(sql, params, many, context)

    started = time.perf_counter()
    with connection.execute_wrapper(count):
        response = upload(api_a, text, mode="all_or_nothing")
    elapsed = time.perf_counter() - started

    assert response.status_code == 201, response.json()["errors"][:3]
    assert response.json()["created"] == rows
    assert Device.objects.filter(provider=provider_a).count() == rows
    assert AuditEvent.objects.filter(action="device.create").count() == rows
    assert audit_verify_chain().ok
    print(f"\n100,000-row upload on {connection.vendor}: {elapsed:.1f} s, {len(statements)} SQL statements")
    # Set-based: batched inserts, never a query per row (SQLite caps a statement at
    # 999 parameters, hence ~3,000 statements there and ~150 on PostgreSQL).
    assert len(statements) < rows / 20
    # Wall-clock only as a sanity bound: a shared CI machine varies several-fold.
    assert elapsed < 180
