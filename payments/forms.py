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
    """Checks the receipt by content (payments.uploads.proof_check) and keeps the result in ``checked``."""

    def clean_receipt(self):
        from django.core.exceptions import ValidationError

        from payments.uploads import proof_check

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
    csv_mapping = forms.CharField(required=False, max_length=60, help_text="Saved CSV mapping, if not a known bank.")
