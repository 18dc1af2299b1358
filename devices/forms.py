"""Forms of the device registry's portal pages (shape only; the services check the rest)."""

from __future__ import annotations

from django import forms


class EnrollmentTokenForm(forms.Form):
    """A new enrolment token: who uses it, for how many phones, for how long."""

    name = forms.CharField(max_length=80, help_text="Tells tokens apart, e.g. Kandy shop, December stock.")
    shop = forms.CharField(
        max_length=80,
        required=False,
        help_text="The shop that uses it; recorded with every enrolment it performs.",
    )
    max_uses = forms.IntegerField(
        label="Phones",
        min_value=1,
        max_value=1_000_000,
        required=False,
        help_text="How many phones it may enrol for the first time (empty: no limit).",
    )
    days = forms.IntegerField(
        label="Valid for (days)",
        min_value=1,
        max_value=3650,
        required=False,
        initial=30,
        help_text="It stops working after this many days (empty: until revoked).",
    )
