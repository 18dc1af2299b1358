"""A finance officer describes a bank's CSV export once, tries it on a sample, and imports with it.

The mapping editor lives under /contracts/statements/mappings/. Every write is audited; bad
settings are refused with the reason on the field concerned; another provider's mapping does
not exist for the officer (404); roles without the statement right are refused as on the
statement pages.
"""

import dataclasses

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from payments.models import CsvColumnMapping
from payments.statements.forms import CsvMappingForm
from payments.statements.imports import statement_import_create, statement_import_run
from payments.statements.mappings import csv_mapping_save
from payments.statements.parsers.csv_format import KNOWN_MAPPINGS, CsvMapping
from payments.statements.parsers.detect import parse_statement
from portal.models import AuditEvent
from tests import factories
from tests.samples import SAMPLES

LIST = reverse("payments:csv_mappings")
NEW = reverse("payments:csv_mapping_new")

# A Kenyan bank's export: comma-separated, decimal point, ISO dates, debit and credit columns.
EQUITY = {
    "name": "Equity Bank",
    "date_column": "Date",
    "debit_column": "Debit",
    "credit_column": "Credit",
    "currency_column": "Currency",
    "reference_columns": ("Text",),
    "delimiter": ",",
    "decimal_comma": False,
    "date_format": "%Y-%m-%d",
}
EQUITY_CSV = (
    b"Date,Debit,Credit,Currency,Text\n"
    b"2024-01-02,,25.00,KES,CONTRACT 4711\n"
    b"2024-02-30,,5.00,KES,bad date\n"
    b"2024-01-03,7.50,,KES,account fee\n"
)
SAMPLE_FILES = {
    "commerzbank": "csv/de_commerzbank_export.csv",
    "1822direkt": "csv/de_1822direkt_export.csv",
    "vrbank_umsatzanzeige": "csv/de_vrbank_genobank_unterallgaeu_export.csv",
}
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"sample files not found at {SAMPLES}")


@pytest.fixture
def finance_b(provider_b):
    return factories.UserFactory(username="finance.b", organisation=provider_b, role="finance")


def form_data(values: dict, **changes) -> dict:
    """What a browser posts for a mapping with ``values`` (CsvMapping fields), then ``changes`` as typed."""
    initial = CsvMappingForm.initial_for(values)
    data = {name: value for name, value in initial.items() if not isinstance(value, bool)}
    data.update({name: "on" for name, value in initial.items() if value is True})
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def sample(content: bytes, name: str = "sample.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/csv")


def saved_mapping(provider, actor, values=EQUITY) -> CsvColumnMapping:
    return csv_mapping_save(provider=provider, name=values["name"], mapping=dict(values), actor=actor)


def edit_url(record) -> str:
    return reverse("payments:csv_mapping_edit", args=[record.pk])


def delete_url(record) -> str:
    return reverse("payments:csv_mapping_delete", args=[record.pk])


# --- the finance officer's day -----------------------------------------------------------------


def test_an_officer_sets_up_a_banks_mapping_tries_it_imports_with_it_changes_it_and_deletes_it(
    as_user, finance_a, provider_a
):
    client = as_user(finance_a)
    assert LIST.encode() in client.get(reverse("payments:statements")).content  # linked from Statements
    assert b"No CSV mapping saved yet" in client.get(LIST).content
    blank = client.get(NEW).context["form"]
    assert (blank["date_column"].value(), blank["delimiter"].value(), blank["encoding"].value()) == ("", ";", "utf-8")

    # She tries the settings on last month's export first: the first entries as the importer
    # reads them, the bad line with its reason, and nothing saved.
    page = client.post(NEW, {**form_data(EQUITY), "action": "preview", "sample": sample(EQUITY_CSV)})
    assert page.status_code == 200
    preview = page.context["preview"]
    assert (preview["line_count"], preview["error_count"]) == (2, 1)
    assert [entry["line"].line_no for entry in preview["entries"]] == [2, 3, 4]
    body = page.content.decode()
    assert "CONTRACT 4711" in body and "credit" in body and "debit" in body
    assert "booking date &#x27;2024-02-30&#x27; is not a date in the format %Y-%m-%d" in body
    assert not CsvColumnMapping.objects.exists() and not AuditEvent.objects.filter(action__startswith="csv_mapping")

    # Saved: what is stored is exactly the mapping the importer rebuilds, and the write is audited.
    response = client.post(NEW, {**form_data(EQUITY), "action": "save"})
    assert response.status_code == 302 and response.url == LIST
    record = CsvColumnMapping.objects.get(provider=provider_a)
    assert CsvMapping(**record.mapping) == CsvMapping(**EQUITY)
    event = AuditEvent.objects.get(action="csv_mapping.save")
    assert (event.actor, event.organisation_id, event.object_id) == (finance_a, provider_a.pk, str(record.pk))
    assert event.before is None and event.after["name"] == "Equity Bank" and event.after["mapping"]["delimiter"] == ","
    listing = client.get(LIST).content.decode()
    assert "Equity Bank" in listing and "comma ," in listing and "%Y-%m-%d" in listing and "utf-8" in listing

    # An import of a CSV names the mapping and is read with it.
    imported = statement_import_create(
        provider=provider_a, filename="equity.csv", raw=EQUITY_CSV, actor=finance_a, csv_mapping="Equity Bank"
    )
    imported = statement_import_run(import_id=imported.pk, actor=finance_a)
    assert (imported.status, imported.summary["rows"], imported.summary["errors"]) == ("done", 3, 1)

    # The bank switches to day-first dates; she edits the format and the change is audited with before/after.
    page = client.get(edit_url(record))
    assert page.status_code == 200 and page.context["form"]["date_format"].value() == "%Y-%m-%d"
    response = client.post(edit_url(record), {**form_data(EQUITY, date_format="%d/%m/%Y"), "action": "save"})
    assert response.status_code == 302
    record.refresh_from_db()
    assert record.mapping["date_format"] == "%d/%m/%Y"
    change = AuditEvent.objects.filter(action="csv_mapping.save").latest("id")
    assert (
        change.before["mapping"]["date_format"] == "%Y-%m-%d" and change.after["mapping"]["date_format"] == "%d/%m/%Y"
    )

    # Deleting asks first, then removes it; the audit trail keeps what it was.
    page = client.get(delete_url(record))
    assert page.status_code == 200 and b"1 import read its file with this mapping" in page.content
    assert CsvColumnMapping.objects.filter(pk=record.pk).exists()
    assert client.post(delete_url(record)).status_code == 302
    assert not CsvColumnMapping.objects.filter(pk=record.pk).exists()
    gone = AuditEvent.objects.get(action="csv_mapping.delete")
    assert gone.object_id == str(record.pk) and gone.before["name"] == "Equity Bank" and gone.after is None


@needs_samples
@pytest.mark.parametrize("bank", list(KNOWN_MAPPINGS))
def test_a_sample_banks_mapping_copied_through_the_form_reads_its_export_like_the_built_in_one(
    as_user, finance_a, provider_a, bank
):
    client = as_user(finance_a)
    built_in = KNOWN_MAPPINGS[bank]
    page = client.get(f"{NEW}?from={bank}")
    assert page.context["form"]["date_column"].value() == built_in.date_column  # a copy to adapt
    values = {**dataclasses.asdict(built_in), "name": f"My {bank}"}
    raw = (SAMPLES / SAMPLE_FILES[bank]).read_bytes()

    page = client.post(NEW, {**form_data(values), "action": "preview", "sample": sample(raw, f"{bank}.csv")})
    expected = parse_statement(raw, "x.csv", format="csv", csv_mapping=built_in)
    assert page.context["preview"]["line_count"] == len(expected.lines) > 0
    first = sorted([*expected.lines, *expected.errors], key=lambda entry: entry.line_no)[:10]
    assert [entry["line"] for entry in page.context["preview"]["entries"]] == first

    assert client.post(NEW, {**form_data(values), "action": "save"}).status_code == 302
    stored = CsvMapping(**CsvColumnMapping.objects.get(provider=provider_a).mapping)
    # Every setting survives the form, including VR-Bank's mark column whose header is blank.
    assert stored == dataclasses.replace(built_in, name=f"My {bank}")


def test_a_tab_separated_export_is_typed_as_backslash_t(as_user, finance_a, provider_a):
    client = as_user(finance_a)
    client.post(NEW, {**form_data(EQUITY, delimiter="\\t"), "action": "save"})
    record = CsvColumnMapping.objects.get(provider=provider_a)
    assert record.mapping["delimiter"] == "\t"
    assert "tab" in client.get(LIST).content.decode()
    assert client.get(edit_url(record)).context["form"]["delimiter"].value() == "\\t"
    tsv = EQUITY_CSV.replace(b",", b"\t")
    preview = client.post(
        edit_url(record), {**form_data(EQUITY, delimiter="tab"), "action": "preview", "sample": sample(tsv)}
    )
    assert preview.context["preview"]["line_count"] == 2


# --- bad input: the reason on the field, nothing saved --------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"encoding": "utf-9"}, "encoding", "not a text encoding Python knows"),
        ({"encoding": "base64"}, "encoding", "not a text encoding Python knows"),
        ({"date_format": "dd.mm.yyyy"}, "date_format", "has no date directive"),
        ({"date_format": "%d.%m"}, "date_format", "does not pin down a day"),
        ({"date_format": "%d.%m.%Y %Q"}, "date_format", "not a date format Python can read"),
        ({"delimiter": ";;"}, "delimiter", "exactly one character"),
        ({"delimiter": '"'}, "delimiter", "quote character"),
        ({"preamble_rows": "-1"}, "preamble_rows", "cannot be negative"),
        ({"preamble_rows": "many"}, "preamble_rows", "Enter a whole number"),
        ({"debit_column": "", "credit_column": ""}, "amount_column", "Give the amount column"),
        ({"credit_column": ""}, "credit_column", "come in pairs"),
        ({"amount_column": "Amount"}, "amount_column", "Leave the amount column empty"),
        ({"direction_column": "S/H"}, "direction_column", "goes with an amount column"),
        ({"currency_column": ""}, "default_currency", "Give the currency column"),
        ({"default_currency": "XYZ"}, "default_currency", "Unknown currency 'XYZ'"),
        ({"end_to_end_pattern": r"EREF:\s*\S+"}, "end_to_end_pattern", "Put parentheses around"),
        ({"return_pattern": "RETOUR|"}, "return_pattern", "matches an empty posting text"),
        ({"return_pattern": "(RETOUR"}, "return_pattern", "not a regular expression"),
        # Patterns that could stall a worker, or that the linear-time engine cannot run.
        ({"return_pattern": "^(a+)+$"}, "return_pattern", "A repeat inside a repeated group"),
        ({"end_to_end_pattern": r"EREF:(\s*\S+)*"}, "end_to_end_pattern", "A repeat inside a repeated group"),
        ({"end_to_end_pattern": r"(EREF)\1"}, "end_to_end_pattern", "Backreferences such as \\1 are not supported"),
        ({"counterparty_account_pattern": r"(?=IBAN)(\S+)"}, "counterparty_account_pattern", "Lookahead"),
        ({"counterparty_account_pattern": r"(?<=IBAN: )(\S+)"}, "counterparty_account_pattern", "Lookbehind"),
        ({"opening_balance_label": "Opening"}, "balance_label_column", "balance labels"),
        ({"date_column": ""}, "date_column", "This field is required"),
        ({"name": ""}, "name", "This field is required"),
    ],
)
def test_a_bad_setting_is_refused_on_its_field_and_nothing_is_saved(
    as_user, finance_a, changes, field, reason, provider_a
):
    client = as_user(finance_a)
    record = saved_mapping(provider_a, finance_a)
    before = dict(record.mapping)
    audited = AuditEvent.objects.count()
    for url in (NEW, edit_url(record)):
        page = client.post(url, {**form_data(EQUITY, **{"name": "Other bank", **changes}), "action": "save"})
        assert page.status_code == 200
        errors = page.context["form"].errors
        assert any(reason in message for message in errors.get(field, [])), errors
    record.refresh_from_db()
    assert record.mapping == before and record.name == "Equity Bank"
    assert CsvColumnMapping.objects.count() == 1 and AuditEvent.objects.count() == audited


def test_a_name_is_used_once_per_provider(as_user, finance_a, finance_b, provider_a, provider_b):
    equity = saved_mapping(provider_a, finance_a)
    other = saved_mapping(provider_a, finance_a, {**EQUITY, "name": "KCB"})
    client = as_user(finance_a)
    page = client.post(NEW, {**form_data(EQUITY), "action": "save"})
    assert "already has a CSV mapping called 'Equity Bank'" in page.context["form"].errors["name"][0]
    page = client.post(edit_url(other), {**form_data(EQUITY), "action": "save"})  # renaming onto it
    assert "already has a CSV mapping called 'Equity Bank'" in page.context["form"].errors["name"][0]
    assert sorted(CsvColumnMapping.objects.values_list("name", flat=True)) == ["Equity Bank", "KCB"]
    equity.refresh_from_db()
    assert equity.name == "Equity Bank"

    # Another provider's officer may use the same name for their own bank.
    client = as_user(finance_b)
    assert client.post(NEW, {**form_data(EQUITY), "action": "save"}).status_code == 302
    assert CsvColumnMapping.objects.filter(provider=provider_b, name="Equity Bank").exists()


def test_the_form_has_a_field_for_every_setting_of_the_parser():
    settings = {item.name for item in dataclasses.fields(CsvMapping)}
    assert settings <= set(CsvMappingForm.base_fields)
    assert set(CsvMappingForm.base_fields) - settings == {"sample"}
    assert all(CsvMappingForm.base_fields[name].label for name in settings)


# --- the preview -----------------------------------------------------------------------------------


def test_the_preview_explains_an_unreadable_sample_and_changes_nothing(as_user, finance_a, provider_a):
    client = as_user(finance_a)
    record = saved_mapping(provider_a, finance_a)
    before = dict(record.mapping)
    url = edit_url(record)

    page = client.post(url, {**form_data(EQUITY), "action": "preview"})
    assert page.context["form"].errors["sample"] == ["Choose a sample file to preview the mapping with."]

    big = sample(b"Date,Debit,Credit,Currency,Text\n" + b"2024-01-02,,1.00,KES,x\n" * 50_000)
    page = client.post(url, {**form_data(EQUITY), "action": "preview", "sample": big})
    assert "a preview reads at most 1 MB" in page.context["form"].errors["sample"][0]

    latin1 = "Date,Debit,Credit,Currency,Text\n2024-01-02,,25.00,KES,Zahlung für 4711\n".encode("iso-8859-1")
    page = client.post(url, {**form_data(EQUITY), "action": "preview", "sample": sample(latin1)})
    assert "byte 0xFC is not valid utf-8" in page.context["preview"]["error"]
    assert "cannot be read with these settings" in page.content.decode()
    # The same file with the encoding it was written in reads fine.
    page = client.post(url, {**form_data(EQUITY, encoding="iso-8859-1"), "action": "preview", "sample": sample(latin1)})
    assert page.context["preview"]["entries"][0]["line"].reference == "Zahlung für 4711"

    page = client.post(url, {**form_data(EQUITY), "action": "preview", "sample": sample(b"Datum;Betrag\n1;2\n")})
    assert "the header lacks the column(s)" in page.context["preview"]["error"]

    many = b"Date,Debit,Credit,Currency,Text\n" + b"".join(
        f"2024-01-{day:02d},,{day}.00,KES,CONTRACT {day}\n".encode() for day in range(1, 26)
    )
    page = client.post(url, {**form_data(EQUITY), "action": "preview", "sample": sample(many)})
    assert page.context["preview"]["line_count"] == 25 and len(page.context["preview"]["entries"]) == 10

    record.refresh_from_db()
    assert record.mapping == before
    assert AuditEvent.objects.filter(action="csv_mapping.save").count() == 1  # only the set-up


# --- who may do what -------------------------------------------------------------------------------


def test_another_providers_officer_finds_no_such_mapping(as_user, finance_b, provider_a, finance_a):
    record = saved_mapping(provider_a, finance_a)
    client = as_user(finance_b)
    assert b"Equity Bank" not in client.get(LIST).content
    assert client.get(edit_url(record)).status_code == 404
    assert (
        client.post(edit_url(record), {**form_data(EQUITY, date_format="%d/%m/%Y"), "action": "save"}).status_code
        == 404
    )
    assert (
        client.post(
            edit_url(record), {**form_data(EQUITY), "action": "preview", "sample": sample(EQUITY_CSV)}
        ).status_code
        == 404
    )
    assert client.get(delete_url(record)).status_code == 404
    assert client.post(delete_url(record)).status_code == 404
    record.refresh_from_db()
    assert record.mapping["date_format"] == "%Y-%m-%d"
    assert AuditEvent.objects.filter(action__startswith="csv_mapping").count() == 1


def test_an_agent_is_refused_as_on_the_statement_pages(as_user, agent_a, provider_a, finance_a):
    record = saved_mapping(provider_a, finance_a)
    client = as_user(agent_a)
    assert client.get(reverse("payments:statements")).status_code == 403
    assert client.get(LIST).status_code == 403
    assert client.get(NEW).status_code == 403
    assert client.post(NEW, {**form_data(EQUITY, name="Agent's"), "action": "save"}).status_code == 403
    assert client.get(edit_url(record)).status_code == 403
    assert (
        client.post(edit_url(record), {**form_data(EQUITY, date_format="%d/%m/%Y"), "action": "save"}).status_code
        == 403
    )
    assert client.post(delete_url(record)).status_code == 403
    record.refresh_from_db()
    assert record.mapping["date_format"] == "%Y-%m-%d" and CsvColumnMapping.objects.count() == 1


def test_outsiders_and_the_operator_are_treated_as_on_the_statement_pages(
    as_user, outsider, operator, provider_a, finance_a
):
    record = saved_mapping(provider_a, finance_a)
    imported = statement_import_create(provider=provider_a, filename="x.csv", raw=EQUITY_CSV, actor=finance_a)
    statement = reverse("payments:statement", args=[imported.pk])
    for user, on_a_mapping in ((outsider, 404), (operator, 403)):
        client = as_user(user)
        assert client.get(reverse("payments:statements")).status_code == client.get(LIST).status_code == 403
        # Outside the tenant scope: not found; in scope (the operator sees every provider) but no right: refused.
        assert client.get(statement).status_code == client.get(edit_url(record)).status_code == on_a_mapping
        assert client.post(delete_url(record)).status_code == on_a_mapping
        client.logout()
    assert CsvColumnMapping.objects.filter(pk=record.pk).exists()


def test_a_mapping_an_import_is_waiting_for_keeps_its_name_and_stays(as_user, finance_a, provider_a):
    record = saved_mapping(provider_a, finance_a)
    statement_import_create(
        provider=provider_a, filename="x.csv", raw=EQUITY_CSV, actor=finance_a, csv_mapping="Equity Bank"
    )  # stored, not yet run: the run looks the mapping up by name
    client = as_user(finance_a)
    page = client.post(edit_url(record), {**form_data(EQUITY, name="Equity"), "action": "save"})
    assert "rename it afterwards" in page.context["form"].errors["name"][0]
    page = client.post(delete_url(record), follow=True)
    assert "delete it afterwards" in page.content.decode()
    record.refresh_from_db()
    assert record.name == "Equity Bank"
    # Other settings may still change: the waiting import reads the mapping as it is then.
    assert client.post(edit_url(record), {**form_data(EQUITY, encoding="cp1252"), "action": "save"}).status_code == 302


def test_the_list_costs_the_same_queries_for_two_or_ten_mappings(
    as_user, finance_a, provider_a, django_assert_max_num_queries
):
    client = as_user(finance_a)
    for index in range(2):
        saved_mapping(provider_a, finance_a, {**EQUITY, "name": f"Bank {index}"})
    client.get(LIST)  # session and user warm, as on any later page
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as for_two:
        assert client.get(LIST).status_code == 200
    for index in range(2, 10):
        saved_mapping(provider_a, finance_a, {**EQUITY, "name": f"Bank {index}"})
    with django_assert_max_num_queries(len(for_two)):
        page = client.get(LIST)
    assert page.content.decode().count("/delete/") == 10


def test_the_service_refuses_settings_the_parser_does_not_know(finance_a, provider_a):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        csv_mapping_save(provider=provider_a, name="Typo", mapping={**EQUITY, "seperator": ";"}, actor=finance_a)
    assert refused.value.message_dict == {"mapping": ["Not CSV mapping settings: seperator."]}
    with pytest.raises(ValidationError) as refused:
        csv_mapping_save(
            provider=provider_a, name="Odd", mapping=CsvMapping(**{**EQUITY, "delimiter": ""}), actor=finance_a
        )
    assert "exactly one character" in refused.value.message_dict["delimiter"][0]
    assert not CsvColumnMapping.objects.exists() and not AuditEvent.objects.filter(action__startswith="csv_mapping")


# --- patterns run with a time limit -----------------------------------------------------------

OLD_CSV = b"Date,Debit,Credit,Currency,Text,Kind\n" + b"".join(
    b"2024-01-0%d,,25.00,KES,CONTRACT 4711,%s\n" % (day, b"a" * 26 + b"b") for day in (2, 3)
)


def saved_before_the_pattern_rules(provider, **patterns) -> CsvColumnMapping:
    """A mapping stored before patterns were checked at save (so it never went through csv_mapping_save)."""
    values = {**EQUITY, "name": "Old bank", "posting_text_column": "Kind", **patterns}
    mapping = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(CsvMapping(**values)).items()}
    return CsvColumnMapping.objects.create(provider=provider, name="Old bank", mapping=mapping)


def test_a_catastrophic_pattern_saved_before_the_rules_costs_an_import_no_time(provider_a, finance_a):
    """The reviewer's ^(a+)+$: seconds per line with a backtracking engine, nothing with RE2."""
    import time

    saved_before_the_pattern_rules(provider_a, return_pattern="^(a+)+$")
    record = statement_import_create(
        provider=provider_a, filename="old.csv", raw=OLD_CSV, actor=finance_a, csv_mapping="Old bank"
    )
    started = time.perf_counter()
    record = statement_import_run(import_id=record.pk, actor=finance_a)
    took = time.perf_counter() - started
    assert record.status == "done" and record.summary["credits"] == 2, record.error
    assert took < 1.0, f"two lines took {took:.1f} s"


def test_a_pattern_the_safe_engine_cannot_run_fails_the_import_with_the_field_and_why(provider_a, finance_a):
    saved_before_the_pattern_rules(provider_a, end_to_end_pattern=r"(?<=EREF: )(\S+)")
    record = statement_import_create(
        provider=provider_a, filename="old.csv", raw=OLD_CSV, actor=finance_a, csv_mapping="Old bank"
    )
    record = statement_import_run(import_id=record.pk, actor=finance_a)
    assert record.status == "failed"
    assert record.error == (
        "CSV mapping 'Old bank': the end to end pattern cannot be used: lookbehind (?<=…) is not supported"
    )
    assert not record.lines.exists()


def test_the_service_refuses_what_no_form_limits(finance_a, provider_a):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        csv_mapping_save(
            provider=provider_a, name="Long", mapping={**EQUITY, "return_pattern": "R" * 501}, actor=finance_a
        )
    assert refused.value.message_dict == {
        "return_pattern": ["The pattern has 501 characters; at most 500 are allowed."]
    }
    assert not CsvColumnMapping.objects.exists()


def test_the_preview_of_a_catastrophic_pattern_is_refused_before_anything_runs(as_user, finance_a):
    client = as_user(finance_a)
    data = form_data({**EQUITY, "posting_text_column": "Kind"}, return_pattern="^(a+)+$")
    page = client.post(NEW, {**data, "action": "preview", "sample": sample(OLD_CSV)})
    assert page.status_code == 200 and page.context["preview"] is None
    assert "A repeat inside a repeated group" in page.context["form"].errors["return_pattern"][0]
