"""Proof of purchase: a technician uploads a receipt and ID, the provider decides, the phone follows.

Stories:
* an owner brings a locked phone and the shop receipt to an authorised service centre; the
  technician uploads photos and PDFs (several files), checked by content and size: an
  executable renamed .jpg, a file over the limit and an SVG carrying a script are refused
  with a clear message and nothing is stored;
* the provider's reviewer sees the documents and the record and decides: locked in error →
  an approved unlock (temporary or release) whose signed command is issued at once; not
  financed → released; rejected → an explanation the technician gives the owner;
* the technician never sees amounts or the owner's name or phone, only the phone, its lock
  state and the outcome; files are served only to the uploading centre and the reviewers;
* provider B's staff, and other service centres, get 404.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from devices.models import DeviceCommand
from portal.models import AuditEvent
from support.models import ProofFile, ProofReview, UnlockRequest
from support.services.reviews import proof_review_decide
from tests import factories
from tests.factories import DeviceFactory, make_contract

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64
PDF = b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 64
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'


def png(name="receipt.png", body=PNG):
    return SimpleUploadedFile(name, body, content_type="image/png")


@pytest.fixture
def contract(provider_a):
    """A phone financed by provider A, past grace at the real clock."""
    return make_contract(provider_a, number="DLG-300", first_due_date=provider_a.today() - dt.timedelta(days=60))


def stored_files(settings) -> list:
    root = settings.MEDIA_ROOT
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def without_tokens(response) -> str:
    """The page without its random CSRF tokens (which could spell "LKR" by chance)."""
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", response.content.decode())


def upload(client, device, receipts, ids=(), note="Bought for cash at the Kandy shop"):
    return client.post(
        reverse("support:review_new"),
        {"imei": device.imei, "receipts": list(receipts), "id_documents": list(ids), "note": note},
    )


@pytest.fixture
def review(contract, technician, as_user):
    response = upload(as_user(technician), contract.device, [png(), png("back.png")], [png("id.png")])
    assert response.status_code == 302
    return ProofReview.objects.get()


def test_a_technician_uploads_several_files_stored_privately(contract, technician, as_user, settings):
    response = upload(
        as_user(technician),
        contract.device,
        [png("IMG_0001.png"), SimpleUploadedFile("bill.pdf", PDF, content_type="application/pdf")],
        [png("nic-front.png")],
    )
    review = ProofReview.objects.get()
    assert response.url == reverse("support:review", args=[review.pk])
    assert review.status == "pending" and review.service_center == technician.organisation
    assert review.provider == contract.provider and review.submitted_by == technician
    files = list(review.files.order_by("id"))
    assert [(f.kind, f.content_type) for f in files] == [
        ("receipt", "image/png"),
        ("receipt", "application/pdf"),
        ("id_document", "image/png"),
    ]
    for f in files:
        assert f.file.name.startswith("support-proofs/") and "IMG_0001" not in f.file.name
        assert (settings.MEDIA_ROOT / f.file.name).exists()
    assert len(stored_files(settings)) == 3
    event = AuditEvent.objects.get(action="proof_review.submit")
    assert event.actor == technician and len(event.after["files"]) == 3


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("receipt.jpg", EXE, "This file is a Windows program, not a receipt, whatever its name says."),
        ("receipt.svg", SVG, "SVG images are not accepted: they can carry scripts."),
        ("huge.png", PNG + b"\x00" * 4000, "the limit is"),
    ],
)
def test_bad_uploads_are_refused_with_a_clear_message_and_nothing_stored(
    contract, technician, as_user, settings, name, body, message
):
    settings.PROOF_MAX_BYTES = 2048
    response = upload(as_user(technician), contract.device, [png("good.png"), png(name, body)])
    page = response.content.decode()
    assert response.status_code == 400
    assert message in page.replace("&#x27;", "'") and name in page
    assert not ProofReview.objects.exists() and not ProofFile.objects.exists()
    assert stored_files(settings) == []
    assert not AuditEvent.objects.filter(action="proof_review.submit").exists()


def test_a_50_mb_file_is_refused_at_the_real_limit(contract, technician, as_user, settings):
    """Not a lowered limit: a phone camera's 50 MB video renamed .png, against the configured 10 MB."""
    assert settings.PROOF_MAX_BYTES == 10 * 1024 * 1024
    response = upload(as_user(technician), contract.device, [png("video.png", PNG + b"\x00" * (50 * 1024 * 1024))])
    assert response.status_code == 400
    assert "the limit is 10" in response.content.decode().replace("&#x27;", "'")
    assert not ProofReview.objects.exists() and stored_files(settings) == []


def test_a_receipt_is_required(contract, technician, as_user):
    response = upload(as_user(technician), contract.device, [], [png("id.png")])
    assert response.status_code == 400 and not ProofReview.objects.exists()


def test_the_technician_never_sees_amounts_or_who_the_owner_is(review, contract, technician, admin_a, as_user):
    customer = contract.customer
    secrets = [customer.name, str(customer.phone), str(customer.phone)[3:], "DLG-300", "LKR", "8,333", "50,000"]

    def technician_pages():
        client = as_user(technician)
        return [
            without_tokens(client.get(reverse("support:reviews"))),
            without_tokens(client.get(reverse("support:review", args=[review.pk]))),
        ]

    for page in technician_pages():
        assert contract.device.imei in page
        for secret in secrets:
            assert secret not in page, secret
    # The reviewer sees the record to compare the ID with.
    reviewer_page = as_user(admin_a).get(reverse("support:review", args=[review.pk])).content.decode()
    assert customer.name in reviewer_page and "DLG-300" in reviewer_page

    proof_review_decide(
        review=review,
        reviewer=admin_a,
        outcome="locked_in_error",
        reason=f"Receipt matches; {customer.name} owes LKR 8,333 but the lock was wrong",
        unlock_kind="temporary",
        hours=24,
    )
    for page in technician_pages():
        assert "Locked in error: unlocked" in page
        for secret in secrets:
            assert secret not in page, secret
    unlock = UnlockRequest.objects.get()
    unlock_page = without_tokens(as_user(technician).get(reverse("support:unlock", args=[unlock.pk])))
    for secret in secrets:
        assert secret not in unlock_page, secret


def test_locked_in_error_unlocks_the_phone_at_once(review, contract, technician, admin_a, as_user):
    response = as_user(admin_a).post(
        reverse("support:review_decide", args=[review.pk]),
        {"outcome": "locked_in_error", "unlock_kind": "temporary", "hours": "48", "reason": "Receipt checks out"},
    )
    assert response.status_code == 302
    review.refresh_from_db()
    unlock = review.unlock_request
    assert review.outcome == "locked_in_error" and review.decided_by == admin_a
    assert unlock.status == "approved" and unlock.requested_by == technician and unlock.decided_by == admin_a
    assert unlock.kind == "temporary" and unlock.hours == 48
    command = DeviceCommand.objects.filter(device=contract.device).order_by("-seq").first()
    assert command.state == "temp_unlocked"
    page = as_user(technician).get(reverse("support:review", args=[review.pk])).content.decode()
    assert "The phone was unlocked for a while" in page and "Receipt checks out" not in page
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"proof_review.decide", "unlock_request.create", "unlock_request.approve", "device.state"} <= actions


def test_a_temporary_unlock_longer_than_the_policy_is_refused_and_nothing_is_decided(review, admin_a, as_user):
    response = as_user(admin_a).post(
        reverse("support:review_decide", args=[review.pk]),
        {"outcome": "locked_in_error", "unlock_kind": "temporary", "hours": "500", "reason": "ok"},
    )
    assert response.status_code == 400 and "from 1 to 72" in response.content.decode()
    review.refresh_from_db()
    assert review.status == "pending" and not UnlockRequest.objects.exists()


def test_not_financed_releases_the_phone_for_good(technician, provider_a, admin_a, as_user):
    retail = DeviceFactory(provider=provider_a)
    upload(as_user(technician), retail, [png()])
    review = ProofReview.objects.get()
    proof_review_decide(review=review, reviewer=admin_a, outcome="not_financed", reason="Retail sale, no contract")
    command = DeviceCommand.objects.filter(device=retail).order_by("-seq").first()
    assert command.state == "released"
    assert UnlockRequest.objects.get().kind == "release"


def test_a_rejection_comes_with_what_to_tell_the_owner(review, technician, admin_a, as_user):
    with pytest.raises(ValidationError):
        proof_review_decide(review=review, reviewer=admin_a, outcome="rejected", reason="Receipt from another shop")
    proof_review_decide(
        review=review,
        reviewer=admin_a,
        outcome="rejected",
        reason="Receipt from another shop",
        explanation="The receipt is for another phone. Please call the Dialog hotline.",
    )
    page = as_user(technician).get(reverse("support:review", args=[review.pk])).content.decode()
    assert "The receipt is for another phone. Please call the Dialog hotline." in page
    assert "Receipt from another shop" not in page
    assert not UnlockRequest.objects.exists()
    # A second decision is told it is done.
    with pytest.raises(ValidationError) as exc:
        proof_review_decide(review=review, reviewer=admin_a, outcome="not_financed", reason="again")
    assert "Already decided by admin.a" in str(exc.value)


def test_files_are_served_only_to_the_centre_and_the_reviewers(review, technician, admin_a, agent_b, outsider, as_user):
    proof = review.files.first()
    url = reverse("support:review_file", args=[proof.pk])
    for user in (technician, admin_a):
        response = as_user(user).get(url)
        assert response.status_code == 200
        assert response["Content-Disposition"].startswith("attachment")
        assert response["X-Content-Type-Options"] == "nosniff"
        assert b"".join(response.streaming_content) == PNG
    assert as_user(agent_b).get(url).status_code == 404
    assert as_user(outsider).get(url).status_code == 404


def test_other_tenants_and_other_centres_get_404(review, contract, provider_a, agent_b, outsider, as_user):
    other_centre = factories.OrganisationFactory(kind="service_center", name="Galle Fix", slug="galle-fix")
    other_centre.served_providers.add(provider_a)
    other_tech = factories.UserFactory(username="tech.galle", organisation=other_centre, role="technician")
    for user in (agent_b, outsider, other_tech):
        client = as_user(user)
        assert client.get(reverse("support:review", args=[review.pk])).status_code == 404, user
        assert client.post(reverse("support:review_decide", args=[review.pk]), {}).status_code == 404, user
        assert contract.device.imei not in client.get(reverse("support:reviews")).content.decode()
    # A technician cannot upload for a provider their centre does not serve.
    assert as_user(outsider).get(reverse("support:review_new"), {"device": contract.device_id}).status_code == 404


def test_roles_upload_review_and_nothing_else(review, technician, agent_a, finance_a, admin_a, as_user):
    client = as_user(technician)
    assert client.post(reverse("support:review_decide", args=[review.pk]), {"outcome": "rejected"}).status_code == 403
    assert as_user(admin_a).get(reverse("support:review_new")).status_code == 403
    assert as_user(finance_a).get(reverse("support:review", args=[review.pk])).status_code == 403


def test_the_list_runs_the_same_queries_for_3_or_10_reviews(
    provider_a, technician, admin_a, as_user, django_assert_max_num_queries
):
    devices = [DeviceFactory(provider=provider_a) for _ in range(10)]
    tech = as_user(technician)
    for device in devices[:3]:
        upload(tech, device, [png()])
    client = as_user(admin_a)
    url = reverse("support:reviews")
    client.get(url)
    with CaptureQueriesContext(connection) as three:
        assert client.get(url).content.decode().count("Waiting for review</span>") == 3
    queries_for_three = len(three)  # read now: the next request clears the query log
    tech = as_user(technician)
    for device in devices[3:]:
        upload(tech, device, [png()])
    client = as_user(admin_a)
    client.get(url)
    with django_assert_max_num_queries(queries_for_three):
        assert client.get(url).content.decode().count("Waiting for review</span>") == 10
