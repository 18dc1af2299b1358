"""Staff portal forms of the money side (thin: parsing only; rules live in the services)."""

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
