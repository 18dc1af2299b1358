"""The owner's lookup form: the phone's IMEI or the contract number, and the phone number on the contract."""

from __future__ import annotations

import re

from django import forms
from django.utils.translation import gettext_lazy


class LookupForm(forms.Form):
    identifier = forms.CharField(
        label=gettext_lazy("IMEI or contract number"),
        max_length=60,
        help_text=gettext_lazy(
            "The IMEI is shown on the lock screen and on the phone's box. "
            "The contract number is on your contract and on your payment receipts."
        ),
        error_messages={"required": gettext_lazy("Enter the IMEI or the contract number.")},
    )
    phone = forms.CharField(
        label=gettext_lazy("Phone number on the contract"),
        max_length=30,
        help_text=gettext_lazy("As you usually write it, with or without the country code."),
        error_messages={"required": gettext_lazy("Enter the phone number on your contract.")},
    )

    def clean_phone(self) -> str:
        raw: str = self.cleaned_data["phone"]
        digits = re.sub(r"\D", "", raw)
        if not 6 <= len(digits) <= 15 or re.search(r"[^\d\s()+.\-/]", raw):
            raise forms.ValidationError(gettext_lazy("Enter the phone number on your contract."))
        return raw
