"""Staff pages for statements and CSV column mappings."""

from __future__ import annotations

from dataclasses import asdict

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.shortcuts import redirect, render

from payments.models import CsvColumnMapping, StatementImport
from payments.statements.forms import CsvMappingForm, StatementUploadForm
from payments.statements.imports import statement_import_create, statement_imports_enqueue
from payments.statements.mappings import csv_mapping_delete as delete_mapping
from payments.statements.mappings import csv_mapping_save
from payments.statements.parsers.csv_format import KNOWN_MAPPINGS
from payments.statements.parsers.detect import parse_statement
from payments.statements.parsers.types import LineError, StatementError
from payments.statements.parsers.types import StatementLine as ParsedLine
from portal.forms import form_errors_from
from portal.http import client_ip
from portal.permissions import Right, require, scoped_get


@login_required
def statement_list(request):
    """Finance officers upload statements and follow their imports."""

    require(request.user, Right.IMPORT_STATEMENTS)
    provider = request.user.organisation
    form = StatementUploadForm(request.POST or None, request.FILES or None, provider=provider)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            record = statement_import_create(
                provider=provider,
                filename=upload.name,
                raw=upload.read(),
                actor=request.user,
                format=form.cleaned_data["format"] or None,
                csv_mapping=form.cleaned_data["csv_mapping"],
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            # Never fails the upload: with the broker down the import waits, stored, for the
            # periodic re-queue; without a broker it runs here and ends done or failed.
            transaction.on_commit(lambda: statement_imports_enqueue([record.pk]))
            messages.success(request, f"{record.filename} is stored and queued for import.")
            return redirect("payments:statement", pk=record.pk)
    imports = StatementImport.objects.filter(provider=provider).select_related("created_by")[:50]
    return render(request, "payments/statement_list.html", {"form": form, "imports": imports})


@login_required
def statement_detail(request, pk: int):
    """One import: progress while it runs, then its summary and every line with what became of it."""

    record = scoped_get(StatementImport.objects.all(), request.user, Right.IMPORT_STATEMENTS, pk=pk)
    lines = record.lines.select_related("payment", "payment__contract").order_by("line_no")
    page = Paginator(lines, 100).get_page(request.GET.get("page"))
    return render(request, "payments/statement_detail.html", {"record": record, "page": page})


_SEPARATOR_NAMES = {"\t": "tab", " ": "space", ";": "semicolon ;", ",": "comma ,", "|": "pipe |"}


_PREVIEW_ROWS = 10


@login_required
def csv_mapping_list(request):
    """The provider's saved CSV mappings, and the sample banks a new one can start from."""

    require(request.user, Right.IMPORT_STATEMENTS)
    mappings = CsvColumnMapping.objects.filter(provider=request.user.organisation).order_by("name")
    rows = [
        {
            "record": record,
            "separator": _SEPARATOR_NAMES.get(record.mapping.get("delimiter"), record.mapping.get("delimiter", "—")),
            "decimal_comma": record.mapping.get("decimal_comma", True),
            "date_format": record.mapping.get("date_format", ""),
            "encoding": record.mapping.get("encoding", ""),
        }
        for record in mappings
    ]
    return render(request, "payments/csv_mapping_list.html", {"rows": rows, "known": list(KNOWN_MAPPINGS)})


@login_required
def csv_mapping_new(request):
    """A new mapping, blank or (``?from=<sample bank>``) a copy of a built-in one to adapt."""

    require(request.user, Right.IMPORT_STATEMENTS)
    start = KNOWN_MAPPINGS.get(request.GET.get("from", ""))
    initial = CsvMappingForm.initial_for({**asdict(start), "name": ""} if start else {})
    return _csv_mapping_form(request, provider=request.user.organisation, record=None, initial=initial)


@login_required
def csv_mapping_edit(request, pk: int):
    """Change a saved mapping; a sample file previews it without saving anything."""

    record = scoped_get(
        CsvColumnMapping.objects.select_related("provider"), request.user, Right.IMPORT_STATEMENTS, pk=pk
    )
    initial = CsvMappingForm.initial_for({**record.mapping, "name": record.name})
    return _csv_mapping_form(request, provider=record.provider, record=record, initial=initial)


def _csv_mapping_form(request, *, provider, record, initial):
    """The new and edit pages: "preview" parses the sample with the form's mapping, "save" stores it."""

    form = CsvMappingForm(request.POST or None, request.FILES or None, initial=initial)
    preview = None
    if request.method == "POST" and form.is_valid():
        if request.POST.get("action") == "preview":
            sample = form.cleaned_data["sample"]
            if sample:
                preview = _csv_preview(form.mapping, sample)
            else:
                form.add_error("sample", "Choose a sample file to preview the mapping with.")
        else:
            try:
                saved = csv_mapping_save(
                    provider=provider,
                    name=form.cleaned_data["name"],
                    mapping=form.mapping,
                    actor=request.user,
                    instance=record,
                    ip_address=client_ip(request),
                )
            except ValidationError as exc:
                form_errors_from(form, exc)
            else:
                messages.success(request, f"CSV mapping “{saved.name}” saved.")
                return redirect("payments:csv_mappings")
    return render(request, "payments/csv_mapping_form.html", {"form": form, "record": record, "preview": preview})


def _csv_preview(mapping, upload) -> dict:
    """The sample read by the importer's own parser: the first entries in file order, or why it can't be read."""

    try:
        parsed = parse_statement(upload.read(), upload.name, format="csv", csv_mapping=mapping)
    except StatementError as exc:
        return {"filename": upload.name, "error": str(exc)}
    # Lines and unreadable entries interleaved by line number, as the officer sees them in the file.
    entries: list[ParsedLine | LineError] = [*parsed.lines, *parsed.errors]
    entries = sorted(entries, key=lambda entry: entry.line_no)[:_PREVIEW_ROWS]
    return {
        "filename": upload.name,
        "entries": [{"line": entry, "error": getattr(entry, "reason", None)} for entry in entries],
        "line_count": len(parsed.lines),
        "error_count": len(parsed.errors),
    }


@login_required
def csv_mapping_delete(request, pk: int):
    """Confirm, then delete a saved mapping (POST only); imports already read with it keep their results."""

    record = scoped_get(
        CsvColumnMapping.objects.select_related("provider"), request.user, Right.IMPORT_STATEMENTS, pk=pk
    )
    if request.method == "POST":
        try:
            delete_mapping(mapping=record, actor=request.user, ip_address=client_ip(request))
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"CSV mapping “{record.name}” deleted.")
            return redirect("payments:csv_mappings")
    used = StatementImport.objects.filter(provider=record.provider, csv_mapping=record.name).count()
    return render(request, "payments/csv_mapping_confirm_delete.html", {"record": record, "used": used})
