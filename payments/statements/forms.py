"""Forms of statements: the upload and the CSV column mapping."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import cast

from django import forms

from payments.models import CsvColumnMapping
from payments.statements.mappings import csv_mapping_problems
from payments.statements.parsers.csv_format import CsvMapping
from payments.statements.parsers.types import FORMAT_LABELS


class StatementUploadForm(forms.Form):
    file = forms.FileField(help_text="MT940, camt.053/054 (XML) or a CSV export; up to 50 MB.")
    format = forms.ChoiceField(
        required=False,
        choices=[("", "Detect"), *FORMAT_LABELS.items()],
    )
    csv_mapping = forms.ChoiceField(
        required=False,
        label="CSV mapping",
        help_text="For a CSV export of a bank finlock does not recognise: one of your saved mappings.",
    )

    def __init__(self, *args, provider=None, **kwargs):
        super().__init__(*args, **kwargs)

        names = CsvColumnMapping.objects.filter(provider=provider).order_by("name").values_list("name", flat=True)
        choice = cast(forms.ChoiceField, self.fields["csv_mapping"])  # declared above
        choice.choices = [("", "Recognise the bank")] + [(name, name) for name in names]


# Typed into a column field for the column whose header cell is empty (VR-Bank's S/H column).
BLANK_HEADER = '""'


CSV_SAMPLE_MAX_BYTES = 1024 * 1024


class ColumnField(forms.CharField):
    """A column's header as the file spells it: empty → no such column (None), ``""`` → the blank header."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("max_length", 200)
        super().__init__(**kwargs)

    def to_python(self, value):
        value = super().to_python(value)
        if value == BLANK_HEADER:
            return ""
        return value or None

    def validate(self, value):
        # "" is a real column (the blank header), so only None counts as missing.
        if self.required and value is None:
            raise forms.ValidationError(self.error_messages["required"], code="required")

    @staticmethod
    def as_text(value) -> str:
        return BLANK_HEADER if value == "" else (value or "")


class OptionalTextField(forms.CharField):
    """A setting that is absent when left empty (None), such as a pattern or a balance label."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value):
        return super().to_python(value) or None

    @staticmethod
    def as_text(value) -> str:
        return value or ""


class ListField(forms.CharField):
    """Several values: one per line (column names may hold commas) or, with ``commas``, comma-separated."""

    def __init__(self, *, commas: bool = False, upper: bool = False, **kwargs):
        self.commas, self.upper = commas, upper
        kwargs.setdefault("required", False)
        if not commas:
            kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 3}))
        super().__init__(**kwargs)

    def to_python(self, value):
        text = super().to_python(value) or ""
        parts = text.split(",") if self.commas else text.splitlines()
        values = tuple(part.strip() for part in parts if part.strip())
        return tuple(part.upper() for part in values) if self.upper else values

    def as_text(self, value) -> str:
        return (", " if self.commas else "\n").join(value or ())


class SeparatorField(forms.CharField):
    r"""The column separator; ``\t`` or "tab" stands for a tab, which a text box cannot hold."""

    def __init__(self, **kwargs):
        super().__init__(strip=False, **kwargs)

    def to_python(self, value):
        value = super().to_python(value)
        if value.strip().lower() in ("\\t", "tab"):
            return "\t"
        # Spaces around a visible separator are slips; a lone space is kept as the separator.
        return value.strip() or value

    @staticmethod
    def as_text(value) -> str:
        return "\\t" if value == "\t" else (value or "")


def _column(label: str, help_text: str = "", **kwargs) -> ColumnField:
    return ColumnField(label=label, help_text=help_text, **kwargs)


class CsvMappingForm(forms.Form):
    """A saved CSV column mapping: how to read one bank's export. Field names are CsvMapping's.

    Parsing only (text → the dataclass's types); whether the settings can read a file is
    decided by ``payments.statements.mappings.csv_mapping_problems``, whose reasons land on the fields.
    ``sample`` is not part of the mapping: a file to preview it with, never stored.
    """

    # The file as a whole.
    name = forms.CharField(
        max_length=60, label="Name", help_text="How officers choose this mapping when importing, e.g. “Equity Bank”."
    )
    encoding = forms.CharField(
        max_length=40,
        label="Encoding",
        help_text="How the bank writes letters: utf-8, iso-8859-1 (Latin-1), cp1252 (Windows) or utf-16.",
    )
    delimiter = SeparatorField(
        max_length=10, label="Separator", help_text=r"The character between columns: ; or , or | — type \t for a tab."
    )
    decimal_comma = forms.BooleanField(
        required=False, label="Decimal comma (1.234,56); leave unticked for a decimal point (1,234.56)"
    )
    date_format = forms.CharField(
        max_length=40,
        label="Date format",
        help_text="As Python writes it: %d.%m.%Y for 31.12.2024, %Y-%m-%d for 2024-12-31, %d/%m/%y for 31/12/24.",
    )
    preamble_rows = forms.IntegerField(
        label="Lines before the header",
        help_text="Lines the bank puts above the column names (account, period…); 0 if the header comes first.",
        widget=forms.NumberInput(attrs={"min": 0}),
    )

    # Dates and amounts.
    date_column = _column("Booking date column", "The column with the date the bank booked the entry.", required=True)
    value_date_column = _column("Value date column", "Optional; the booking date stands in when empty.")
    amount_column = _column(
        "Amount column",
        "A signed amount (negative = debit), or an unsigned one with a mark column. Empty with debit/credit columns.",
    )
    debit_column = _column("Debit column", "Only if money out and money in are in separate columns.")
    credit_column = _column("Credit column", "Goes with the debit column.")
    direction_column = _column(
        "Debit/credit mark column",
        f"Only if the amount is unsigned and another column says S/H or D/C; {BLANK_HEADER} if its header is blank.",
    )
    debit_marks = ListField(commas=True, upper=True, label="Debit marks", help_text="Comma-separated, e.g. S, D, DR.")
    credit_marks = ListField(commas=True, upper=True, label="Credit marks", help_text="Comma-separated, e.g. H, C, CR.")
    currency_column = _column("Currency column", "Leave empty if the file has none; then give the default currency.")
    default_currency = forms.CharField(
        required=False,
        max_length=3,
        label="Default currency",
        help_text="ISO code (EUR, KES, LKR) for lines without a currency column or cell.",
    )

    # What identifies the payer and the contract.
    reference_columns = ListField(
        label="Reference (purpose) columns",
        help_text="One per line, in order; their texts are joined. The contract number is usually in here.",
    )
    counterparty_name_column = _column("Payer name column")
    counterparty_account_column = _column("Payer account (IBAN) column")
    end_to_end_column = _column(
        "End-to-end id column", "The payer's own reference for the transfer, if the bank has it."
    )
    bank_reference_column = _column("Bank reference column")
    posting_text_column = _column(
        "Posting text column", "The kind of entry (transfer, return…); returns are found here."
    )
    account_column = _column("Own account column", "The account the statement is for, if the file has it per line.")

    # Rarely needed: for exports that hide data in texts or around the table.
    end_to_end_pattern = OptionalTextField(
        max_length=300,
        label="End-to-end id pattern",
        help_text=r"A regular expression with one group, searched in the reference, e.g. EREF:\s*(\S+).",
    )
    counterparty_account_pattern = OptionalTextField(
        max_length=300,
        label="Payer account pattern",
        help_text=r"A regular expression with one group, e.g. IBAN:\s*([A-Z]{2}\d{2}[A-Z0-9]{10,30}).",
    )
    return_pattern = forms.CharField(
        max_length=500,
        label="Return pattern",
        help_text="A regular expression for posting texts of returns and reversals; they are never credited.",
    )
    preamble_account_labels = ListField(
        label="Account labels above the header",
        help_text="One per line, e.g. BLZ: and Konto:; the cell after each label is the account.",
    )
    balance_label_column = _column("Balance label column", "The column in which the balance rows carry their label.")
    opening_balance_label = OptionalTextField(
        max_length=100, label="Opening balance label", help_text="E.g. Anfangssaldo."
    )
    closing_balance_label = OptionalTextField(max_length=100, label="Closing balance label", help_text="E.g. Endsaldo.")
    wrapped_purpose_width = forms.IntegerField(
        label="Purpose wrapped at (characters)",
        help_text="If the bank cuts the purpose text into lines of this width; 0 if it does not.",
        widget=forms.NumberInput(attrs={"min": 0}),
    )
    purpose_first_line_is_posting_text = forms.BooleanField(
        required=False, label="The first line of the purpose is the posting text"
    )
    signature = ListField(
        label="Header columns that identify the bank",
        help_text="One per line. Only for recognising a file by itself; may stay empty.",
    )

    sample = forms.FileField(
        required=False,
        label="Sample file",
        help_text="A CSV export from this bank, at most 1 MB. Read for the preview only, never kept.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.txt,text/csv,text/plain"}),
    )

    @staticmethod
    def mapping_fields() -> list[str]:

        return [item.name for item in fields(CsvMapping)]

    @classmethod
    def initial_for(cls, values: dict) -> dict:
        """Form initial data for saved mapping values (the JSON, or ``asdict`` of a CsvMapping)."""

        # date_column None: an empty box, not the blank header.
        defaults = {**asdict(CsvMapping(name="", date_column="")), "date_column": None}
        initial = {}
        for name in cls.mapping_fields():
            value = values.get(name, defaults[name])
            field = cls.base_fields[name]
            initial[name] = field.as_text(value) if hasattr(field, "as_text") else value
        return initial

    def clean_default_currency(self):
        return self.cleaned_data["default_currency"].strip().upper()

    def clean_sample(self):
        upload = self.cleaned_data.get("sample")
        # By size, before anything is read: a preview needs the first lines, not a year of them.
        if upload and upload.size > CSV_SAMPLE_MAX_BYTES:
            raise forms.ValidationError(
                f"The sample is {upload.size / (1024 * 1024):.1f} MB; a preview reads at most 1 MB. "
                "Cut the file down to its first lines."
            )
        return upload

    def clean(self):

        super().clean()
        cleaned = self.cleaned_data
        broken = set(self.errors)
        # A field that failed to parse takes its default here; its own error already says why,
        # and problems reported on it are dropped so the officer reads one reason per field.
        values = {item.name: cleaned[item.name] for item in fields(CsvMapping) if item.name in cleaned}
        values.setdefault("name", "")
        values.setdefault("date_column", "")
        self.mapping = CsvMapping(**values)
        for field, messages in csv_mapping_problems(self.mapping).items():
            if field in broken or (field not in self.fields and broken):
                continue
            self.add_error(field if field in self.fields else None, messages)
        return cleaned
