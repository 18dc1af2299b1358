"""``python manage.py import_statement <file> --provider <slug>``: the portal's statement import, from a shell.

Prints progress and, as its last line, a JSON summary with at least rows, credits, debits,
duplicates, errors, matched and unmatched.
"""

import json
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from payments.statements.imports import statement_import_create, statement_import_run
from payments.statements.parsers.types import FORMATS
from portal.models import Organisation, OrganisationKind


class Command(BaseCommand):
    help = "Import a bank statement (MT940, camt.053/054, CSV) or mobile-money report for a provider."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--provider", required=True, help="provider slug")
        parser.add_argument("--format", choices=FORMATS, default=None)
        parser.add_argument("--mapping", default="", help="name of a saved CSV column mapping")

    def handle(self, *args: Any, file: Path, provider: str, format: str | None, mapping: str, **options: Any) -> None:
        org = Organisation.objects.filter(slug=provider, kind=OrganisationKind.PROVIDER).first()
        if org is None:
            raise CommandError(f"No provider with slug {provider!r}.")
        if not file.is_file():
            raise CommandError(f"{file} is not a readable file.")
        try:
            record = statement_import_create(
                provider=org, filename=file.name, raw=file.read_bytes(), actor=None, format=format, csv_mapping=mapping
            )
        except ValidationError as exc:
            raise CommandError("; ".join(" ".join(v) for v in exc.message_dict.values())) from None
        record = statement_import_run(import_id=record.pk)
        summary = {k: v for k, v in record.summary.items() if k != "error_lines"}
        for error in record.summary.get("error_lines", []):
            self.stdout.write(f"line {error['line_no']}: {error['reason']}")
        if record.error:
            self.stdout.write(f"import failed: {record.error}")
            summary["error"] = record.error
        self.stdout.write(json.dumps({"import": record.pk, "status": record.status, **summary}))
