"""Forms of the ledger: matching, reversing, verifying from a proof, payment channels."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from payments.models import ChannelKind
from portal.forms import choice_field
from portal.uploads import CheckedProof, proof_check


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


class _ProofForm(forms.Form):
    """Checks the receipt by content (portal.uploads.proof_check) and keeps the result in ``checked``."""

    checked: CheckedProof | None = None

    def clean_receipt(self) -> Any:

        upload = self.cleaned_data.get("receipt")
        if not upload:
            self.checked = None
            return upload
        try:
            self.checked = proof_check(upload)
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None
        return upload


class VerifyExistingForm(_ProofForm):
    """Confirm a payment found by its transaction id; a receipt may be attached."""

    payment = forms.IntegerField(widget=forms.HiddenInput)
    receipt = _proof_field(required=False)


class RecordFromProofForm(_ProofForm):
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choice_field(self, "channel").choices = ChannelKind.choices


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choice_field(self, "kind").choices = ChannelKind.choices
