"""Staff portal forms of the money side (thin: parsing only; rules live in the services)."""

from decimal import Decimal

from django import forms

WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]


class DayListField(forms.CharField):
    """ "3, 1" → [3, 1]."""

    def to_python(self, value):
        value = super().to_python(value)
        if not value.strip():
            return []
        try:
            return sorted({int(part) for part in value.replace(";", ",").split(",") if part.strip()}, reverse=True)
        except ValueError:
            raise forms.ValidationError("Whole numbers of days separated by commas, e.g. 3, 1.") from None

    def prepare_value(self, value):
        return ", ".join(str(v) for v in value) if isinstance(value, list) else value


class LockPolicyForm(forms.Form):
    grace_days = forms.IntegerField(min_value=0, max_value=60, help_text="Days after a due date before a lock.")
    reminder_days_before = DayListField(required=False, help_text="Days before the due date, e.g. 3, 1.")
    reminder_days_after = DayListField(required=False, help_text="Days after the due date, e.g. 1, 2.")
    lock_start_hour = forms.IntegerField(min_value=0, max_value=23, help_text="Local hour from which a lock may start.")
    lock_end_hour = forms.IntegerField(min_value=1, max_value=24, help_text="Local hour from which no lock may start.")
    lock_weekdays = forms.TypedMultipleChoiceField(
        choices=WEEKDAYS, coerce=int, widget=forms.CheckboxSelectMultiple, help_text="Days on which a lock may start."
    )
    max_temp_unlock_hours = forms.IntegerField(min_value=1, max_value=720, label="Longest temporary unlock (hours)")
    unlock_alert_minutes = forms.IntegerField(
        min_value=1, max_value=1440, label="Flag an unacknowledged unlock after (minutes)"
    )
    provisional_installments = forms.IntegerField(
        min_value=0,
        max_value=12,
        label="Credit at once from a receipt: installments",
        help_text="At most what is still due on the contract's this many oldest unpaid installments, for all its "
        "unconfirmed receipts together (1: the arrears of one installment; 0: nothing until confirmed).",
    )
    provisional_max_amount = forms.DecimalField(
        required=False,
        min_value=Decimal("0"),
        max_digits=14,
        decimal_places=2,
        label="… and never more than (optional)",
        help_text="An amount in your currency; empty: no cap beyond the installments.",
    )
    provisional_confirm_days = forms.IntegerField(
        min_value=1,
        max_value=90,
        label="Flag to finance when no channel confirmed it after (days)",
    )


class LockScreenTextForm(forms.Form):
    title = forms.CharField(max_length=120, help_text="Shown in large type on the locked phone.")
    body = forms.CharField(max_length=1500, widget=forms.Textarea(attrs={"rows": 5}))
    reminder_title = forms.CharField(max_length=120, help_text="Shown while the phone is usable but a payment is due.")
    reminder_body = forms.CharField(max_length=1500, widget=forms.Textarea(attrs={"rows": 3}))
    data_kept_notice = forms.CharField(max_length=300, widget=forms.Textarea(attrs={"rows": 2}))
    factory_reset_warning = forms.CharField(max_length=300, widget=forms.Textarea(attrs={"rows": 2}))
    offline_unlock_hint = forms.CharField(max_length=300, widget=forms.Textarea(attrs={"rows": 2}))


# --- payments: matching, reversing, verifying with the customer on the line ----------------------


class MatchByNumberForm(forms.Form):
    """A finance officer types the contract number the payment is for (as the payer may have mistyped it)."""

    contract_number = forms.CharField(
        max_length=40, label="Contract number", help_text="As printed on the contract; spaces and dashes don't matter."
    )


class ReverseForm(forms.Form):
    """Why a payment is reversed (chargeback, returned transfer); kept in the audit trail."""

    reason = forms.CharField(
        max_length=300,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Kept in the audit trail, e.g. “Bank returned the transfer on 3 March”.",
    )
    confirm = forms.BooleanField(label="I understand the money comes off the contract and the phone may lock again.")


class TransactionLookupForm(forms.Form):
    """The transaction id the customer reads out from their receipt or SMS."""

    transaction_id = forms.CharField(
        max_length=100, label="Transaction id", help_text="As the customer reads it from the receipt or SMS."
    )


def _proof_field(required: bool) -> forms.FileField:
    return forms.FileField(
        required=required,
        label="Receipt" if required else "Receipt (optional)",
        help_text="A photo or screenshot (JPEG, PNG, WebP) or a PDF, at most 10 MB.",
        widget=forms.ClearableFileInput(attrs={"accept": "image/jpeg,image/png,image/webp,application/pdf"}),
    )


class _ProofMixin:
    """Checks the receipt by content (portal.uploads.proof_check) and keeps the result in ``checked``."""

    def clean_receipt(self):
        from django.core.exceptions import ValidationError

        from portal.uploads import proof_check

        upload = self.cleaned_data.get("receipt")
        if not upload:
            self.checked = None
            return upload
        try:
            self.checked = proof_check(upload)
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None
        return upload


class VerifyExistingForm(_ProofMixin, forms.Form):
    """Confirm a payment found by its transaction id; a receipt may be attached."""

    payment = forms.IntegerField(widget=forms.HiddenInput)
    receipt = _proof_field(required=False)


class RecordFromProofForm(_ProofMixin, forms.Form):
    """A payment the provider has not received a record of yet, typed from the customer's receipt."""

    channel = forms.ChoiceField(choices=())
    amount = forms.DecimalField(max_digits=14, decimal_places=2, min_value=Decimal("0.01"), label="Amount")
    received_at = forms.DateTimeField(
        label="Received (local time)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"],
        help_text="Date and time on the receipt, in the provider's time zone.",
    )
    transaction_id = forms.CharField(max_length=100, label="Transaction id")
    receipt = _proof_field(required=True)

    def __init__(self, *args, **kwargs):
        from payments.models import ChannelKind

        super().__init__(*args, **kwargs)
        self.fields["channel"].choices = ChannelKind.choices


class StatementUploadForm(forms.Form):
    file = forms.FileField(help_text="MT940, camt.053/054 (XML) or a CSV export; up to 50 MB.")
    format = forms.ChoiceField(
        required=False,
        choices=[
            ("", "Detect"),
            ("mt940", "MT940"),
            ("camt053", "camt.053"),
            ("camt054", "camt.054"),
            ("csv", "CSV"),
        ],
    )
    csv_mapping = forms.ChoiceField(
        required=False,
        label="CSV mapping",
        help_text="For a CSV export of a bank finlock does not recognise: one of your saved mappings.",
    )

    def __init__(self, *args, provider=None, **kwargs):
        super().__init__(*args, **kwargs)
        from payments.models import CsvColumnMapping

        names = CsvColumnMapping.objects.filter(provider=provider).order_by("name").values_list("name", flat=True)
        self.fields["csv_mapping"].choices = [("", "Recognise the bank")] + [(name, name) for name in names]


# --- CSV column mappings: one field per CsvMapping setting ------------------------------------

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
        text = super().to_python(value)
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
    decided by ``payments.services.csv_mapping_problems``, whose reasons land on the fields.
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
        from dataclasses import fields

        from payments.statements.csv_format import CsvMapping

        return [item.name for item in fields(CsvMapping)]

    @classmethod
    def initial_for(cls, values: dict) -> dict:
        """Form initial data for saved mapping values (the JSON, or ``asdict`` of a CsvMapping)."""
        from payments.statements.csv_format import CsvMapping

        defaults = CsvMapping(name="", date_column=None)  # None: an empty box, not the blank header
        initial = {}
        for name in cls.mapping_fields():
            value = values.get(name, getattr(defaults, name))
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
        from dataclasses import fields

        from payments.services import csv_mapping_problems
        from payments.statements.csv_format import CsvMapping

        cleaned = super().clean()
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


# --- payment channels: how owners pay, shown on every lock screen -------------------------------


class PaymentChannelForm(forms.Form):
    """A provider admin describes one way to pay (rules — placeholders, short code — live in the service)."""

    kind = forms.ChoiceField(label="Kind")
    name = forms.CharField(max_length=80, help_text="As the owner knows it, e.g. M-PESA Paybill.")
    account = forms.CharField(max_length=80, help_text="Account, paybill or till number to pay to.")
    reference = forms.CharField(
        max_length=120,
        initial="{contract}",
        help_text="What the payer must type as reference; placeholders allowed, e.g. {contract}.",
    )
    instructions = forms.CharField(max_length=300, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    short_code = forms.CharField(
        max_length=12,
        required=False,
        label="M-Pesa short code",
        help_text=(
            "Mobile money only: the paybill or till number as M-Pesa reports it (5 to 7 digits). When set, "
            "M-Pesa callbacks for any other number are never credited by themselves."
        ),
    )

    def __init__(self, *args, **kwargs):
        from payments.models import ChannelKind

        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = ChannelKind.choices
