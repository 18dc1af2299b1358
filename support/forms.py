"""Forms of the support pages. They validate input; the services decide and write."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from devices.models import OfflineCodeKind
from portal.models import User
from portal.uploads import proof_check
from support.models import (
    IDENTITY_CHECKS,
    CaseCategory,
    CaseChannel,
    Resolution,
    ReviewOutcome,
    UnlockKind,
)


class CaseOpenForm(forms.Form):
    imei = forms.CharField(
        label="Phone IMEI", required=False, max_length=40, help_text="As the caller reads it (dial *#06#)."
    )
    contract_number = forms.CharField(label="Contract number", required=False, max_length=40)
    category = forms.ChoiceField(choices=CaseCategory.choices)
    channel = forms.ChoiceField(choices=CaseChannel.choices, initial=CaseChannel.HOTLINE)
    summary = forms.CharField(
        max_length=300, widget=forms.Textarea(attrs={"rows": 3}), help_text="What the caller needs, in a sentence."
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or self.cleaned_data
        if not data.get("imei", "").strip() and not data.get("contract_number", "").strip():
            raise ValidationError("Give the phone's IMEI or the contract number (or both).")
        return data


class NoteForm(forms.Form):
    text = forms.CharField(label="Note", max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))


class StaffChoiceField(forms.ModelChoiceField):
    """A member of staff, by full name (or user name when there is none)."""

    def label_from_instance(self, obj: User) -> str:
        return obj.get_full_name() or obj.get_username()


class AssignForm(forms.Form):
    assignee = StaffChoiceField(queryset=None, required=False, empty_label="Nobody (back to the queue)")

    def __init__(self, *args: Any, staff: QuerySet[User] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["assignee"]
        assert isinstance(field, StaffChoiceField)
        field.queryset = staff


class IdentityForm(forms.Form):
    checks = forms.MultipleChoiceField(
        label="The caller confirmed",
        choices=list(IDENTITY_CHECKS.items()),
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )


class ResolveForm(forms.Form):
    resolution = forms.ChoiceField(choices=Resolution.choices)
    note = forms.CharField(
        label="What was done", max_length=2000, widget=forms.Textarea(attrs={"rows": 3}), help_text="Required."
    )


class UnlockRequestForm(forms.Form):
    imei = forms.CharField(label="Phone IMEI", max_length=40, required=False)
    kind = forms.ChoiceField(choices=UnlockKind.choices, widget=forms.RadioSelect, initial=UnlockKind.TEMPORARY)
    hours = forms.IntegerField(
        label="Hours (temporary unlock)", min_value=1, required=False, help_text="Capped by the lock policy."
    )
    offline_kind = forms.ChoiceField(
        label="Offline code", choices=[("", "—"), *OfflineCodeKind.choices], required=False
    )
    days = forms.IntegerField(label="Days (offline code for N days)", min_value=1, required=False)
    reason = forms.CharField(max_length=300, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, max_hours: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if max_hours:
            hours = self.fields["hours"]
            assert isinstance(hours, forms.IntegerField)
            hours.max_value = max_hours
            hours.help_text = f"1 to {max_hours} (the provider's lock policy)."
            hours.widget.attrs["max"] = max_hours

    def clean(self) -> dict[str, Any]:
        data = super().clean() or self.cleaned_data
        kind = data.get("kind")
        if kind == UnlockKind.TEMPORARY and not data.get("hours"):
            self.add_error("hours", "How many hours?")
        if kind == UnlockKind.OFFLINE_CODE:
            if not data.get("offline_kind"):
                self.add_error("offline_kind", "Choose a code for a number of days or a release code.")
            elif data["offline_kind"] == OfflineCodeKind.UNLOCK_DAYS and not data.get("days"):
                self.add_error("days", "How many days?")
        return data


class UnlockDecisionForm(forms.Form):
    note = forms.CharField(label="Note", max_length=300, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class MultipleFileInput(forms.FileInput):
    allow_multiple_selected = True


class MultipleProofField(forms.FileField):
    """Several files in one field, each checked by content and size (``portal.uploads.proof_check``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/jpeg,image/png,image/webp,.pdf"}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        uploads = [d for d in (data if isinstance(data, list | tuple) else [data]) if d]
        if not uploads:
            if self.required:
                raise ValidationError(self.error_messages["required"], code="required")
            return []
        checked, errors = [], []
        for upload in uploads:
            try:
                checked.append(proof_check(upload))
            except ValidationError as exc:
                # The file's name as the browser sent it, so the technician knows which one.
                errors.append(f"{getattr(upload, 'name', 'file')}: {' '.join(exc.messages)}")
        if errors:
            raise ValidationError(errors)
        return checked


class ProofReviewForm(forms.Form):
    imei = forms.CharField(label="Phone IMEI", max_length=40, required=False)
    receipts = MultipleProofField(
        label="Receipt (photos or PDF)", help_text="JPEG, PNG, WebP or PDF, checked by content; several allowed."
    )
    id_documents = MultipleProofField(
        label="Owner's ID (photos or PDF)", required=False, help_text="Front and back; several allowed."
    )
    note = forms.CharField(
        label="What the owner says",
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class ReviewDecideForm(forms.Form):
    outcome = forms.ChoiceField(choices=ReviewOutcome.choices, widget=forms.RadioSelect)
    unlock_kind = forms.ChoiceField(
        label="Unlock (locked in error)",
        choices=[(UnlockKind.TEMPORARY, "Temporary unlock"), (UnlockKind.RELEASE, "Release for good")],
        initial=UnlockKind.TEMPORARY,
        required=False,
    )
    hours = forms.IntegerField(label="Hours (temporary unlock)", min_value=1, required=False)
    reason = forms.CharField(
        label="Reason (for the provider's records)", max_length=300, widget=forms.Textarea(attrs={"rows": 2})
    )
    explanation = forms.CharField(
        label="What the technician tells the owner",
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required when rejecting. Never mention amounts.",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or self.cleaned_data
        temporary = data.get("unlock_kind") == UnlockKind.TEMPORARY
        if data.get("outcome") == ReviewOutcome.LOCKED_IN_ERROR and temporary and not data.get("hours"):
            self.add_error("hours", "How many hours?")
        if data.get("outcome") == ReviewOutcome.REJECTED and not (data.get("explanation") or "").strip():
            self.add_error("explanation", "Write what the technician should tell the owner.")
        return data
