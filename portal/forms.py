from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from portal.models import WebhookEventName


class LoginForm(AuthenticationForm):
    # max_length here, not only AuthenticationForm's widget attribute: Django sets that one after the
    # field is built, so it validates nothing, and django-axes would then store an over-long username
    # of a failed sign-in in its 255-character column (a 500 on PostgreSQL).
    username = forms.CharField(
        label="Username",
        max_length=150,
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"}),
    )


class TokenForm(forms.Form):
    token = forms.RegexField(
        regex=r"^\d{6}$",
        label="6-digit code from your authenticator app",
        error_messages={"invalid": "Enter the 6 digits shown in your authenticator app."},
        widget=forms.TextInput(
            attrs={"autofocus": True, "autocomplete": "one-time-code", "inputmode": "numeric", "maxlength": 6}
        ),
    )


class WebhookForm(forms.Form):
    """A new provider webhook: where to POST, and which events."""

    url = forms.URLField(
        label="Endpoint URL",
        max_length=500,
        assume_scheme="https",
        help_text="Your system's HTTPS address that accepts POSTed JSON events.",
    )
    events = forms.MultipleChoiceField(
        label="Events",
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one event."},
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        choice_field(self, "events").choices = WebhookEventName.choices

    def clean_url(self):
        # The model says so too; checked here as well so every mistake is named at once.
        url = self.cleaned_data["url"]
        if not url.lower().startswith("https://") and not settings.DEBUG:
            raise forms.ValidationError("Use an https:// address.")
        return url


def choice_field(form: forms.BaseForm, name: str) -> forms.ChoiceField:
    """The form's choice field ``name`` (to set its choices when the form is made)."""
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField), f"{name} is not a choice field"
    return field


def form_errors_from(form: forms.BaseForm, exc: ValidationError) -> None:
    """Put a service's ``ValidationError`` on the form: per field where the form has that field, else on top.

    Services validate (one home per rule); views only show what they say, through this.
    """
    if hasattr(exc, "error_dict"):
        for name, errors in exc.message_dict.items():
            form.add_error(name if name in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)
