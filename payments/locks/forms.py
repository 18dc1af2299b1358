"""Forms of the lock policy and the lock-screen wording."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms

WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]


class DayListField(forms.CharField):
    """ "3, 1" → [3, 1]."""

    def to_python(self, value: Any) -> list[int]:  # type: ignore[override]  # a list of days, not the text typed
        text = super().to_python(value) or ""
        if not text.strip():
            return []
        try:
            return sorted({int(part) for part in text.replace(";", ",").split(",") if part.strip()}, reverse=True)
        except ValueError:
            raise forms.ValidationError("Whole numbers of days separated by commas, e.g. 3, 1.") from None

    def prepare_value(self, value: Any) -> Any:  # a list of days, or the text typed when it was refused
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
    offline_lock_days = forms.IntegerField(
        required=False,
        min_value=3,
        max_value=200,
        label="Lock a phone that has not reached finlock for (days)",
        help_text="3 to 200 days; empty: never (the default).",
        error_messages={
            "min_value": "At least 3 days: a shorter time locks phones that are only out of coverage.",
            "max_value": "At most 200 days.",
        },
    )
    offline_warning_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10,
        label="Warn the owner this many days before (days)",
        help_text="1 to 10 days, fewer than the days above; empty: 3.",
        error_messages={"min_value": "At least 1 day.", "max_value": "At most 10 days."},
    )

    def clean_offline_warning_days(self) -> int:
        # Not required, so that a form saved before this setting existed keeps working: empty is the default.
        value: int | None = self.cleaned_data.get("offline_warning_days")
        return 3 if value is None else value


class LockScreenTextForm(forms.Form):
    title = forms.CharField(max_length=120, help_text="Shown in large type on the locked phone.")
    body = forms.CharField(max_length=1500, widget=forms.Textarea(attrs={"rows": 5}))
    reminder_title = forms.CharField(max_length=120, help_text="Shown while the phone is usable but a payment is due.")
    reminder_body = forms.CharField(max_length=1500, widget=forms.Textarea(attrs={"rows": 3}))
    data_kept_notice = forms.CharField(max_length=300, widget=forms.Textarea(attrs={"rows": 2}))
    factory_reset_warning = forms.CharField(max_length=300, widget=forms.Textarea(attrs={"rows": 2}))
    offline_unlock_hint = forms.CharField(max_length=300, widget=forms.Textarea(attrs={"rows": 2}))
