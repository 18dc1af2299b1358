"""Safaricom Daraja C2B v1 callbacks: validation and confirmation of M-Pesa paybill payments.

Daraja posts its own JSON and cannot send an ``Authorization`` header, so these two
endpoints also accept the provider's API key as the ``key`` query parameter of the
registered callback URL. Only these endpoints do: everywhere else a key in a URL is
refused, because URLs end up in proxies' and browsers' logs.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any, NoReturn

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments.api.base import api_client
from payments.ledger.errors import PaymentConflict
from payments.ledger.mpesa import (
    DARAJA_FIELDS,
    C2BTransaction,
    ValidationResult,
    mpesa_confirmation_ingest,
    validation_decision,
)
from portal.api.authentication import ApiKeyAuthentication
from portal.api.parsers import DecimalJSONParser
from portal.http import client_ip
from portal.models import ApiKey
from portal.permissions import ApiClient, Right

log = logging.getLogger(__name__)

# Longest text we take in any Daraja field; real values are far shorter (names, ids, MSISDN hash).
MAX_FIELD_LENGTH = 200


class DarajaKeyAuthentication(ApiKeyAuthentication):
    """The provider API key as the ``key`` query parameter: what Daraja can send.

    Listed after ``ApiKeyAuthentication`` on the callback views, so a Bearer header (used
    by tests and proxies) is tried first and this only runs without one. The key travels
    in the URL here, so it must never be written to a log: this module logs provider
    slugs and transaction ids only, and Django's request logger writes the path without
    the query string.
    """

    query_param = "key"

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiKey] | None:
        token = request.query_params.get(self.query_param)
        if token is None:
            return None
        return self.authenticate_key(token)


class DarajaKeyScheme(OpenApiAuthenticationExtension):
    target_class = DarajaKeyAuthentication
    name = "DarajaCallbackKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "query",
            "name": DarajaKeyAuthentication.query_param,
            "description": "The provider API key in the callback URL registered with Daraja, accepted by the "
            "M-Pesa callbacks only (Daraja cannot send headers): "
            "`https://<host>/api/v1/c2b/confirmation/?key=<key>`.",
        }


@extend_schema_field(OpenApiTypes.STR)
class DarajaText(serializers.Field):
    """A Daraja field: a string (some Daraja versions send bare numbers), printable, at most 200 characters.

    Control characters are refused because PostgreSQL cannot store a NUL and nobody can
    type one back into a search box.
    """

    default_error_messages = {
        "invalid": "Send text (a string).",
        "control": "Printable characters only (no control characters).",
        "max_length": f"At most {MAX_FIELD_LENGTH} characters.",
        "blank": "This field may not be blank.",
    }

    def __init__(self, *, allow_blank: bool = True, **kwargs: Any) -> None:
        self.allow_blank = allow_blank
        if not kwargs.get("required", True):
            kwargs.setdefault("default", "")
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, bool) or not isinstance(data, str | int | Decimal):
            self.fail("invalid")
        text = str(data)
        if len(text) > MAX_FIELD_LENGTH:
            self.fail("max_length")
        if any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 or 0xD800 <= ord(ch) < 0xE000 for ch in text):
            self.fail("control")
        if not self.allow_blank and not text.strip():
            self.fail("blank")
        return text

    def to_representation(self, value: str) -> str:
        return value


class C2BValidationSerializer(serializers.Serializer):
    """Daraja's C2B v1 body, as sent to the validation URL; unknown fields are ignored."""

    TransactionType = DarajaText(required=False)
    TransID = DarajaText(required=False)
    TransTime = DarajaText(required=False, help_text="YYYYMMDDHHMMSS in East Africa Time (Africa/Nairobi).")
    TransAmount = DarajaText(required=False, help_text='The amount in KES as a string, e.g. "10.00".')
    BusinessShortCode = DarajaText(required=False)
    BillRefNumber = DarajaText(required=False, help_text="The account number as the payer typed it.")
    InvoiceNumber = DarajaText(required=False)
    OrgAccountBalance = DarajaText(required=False)
    ThirdPartyTransID = DarajaText(required=False)
    MSISDN = DarajaText(required=False, help_text='The payer\'s number, plain or masked ("2547 ***** 149").')
    FirstName = DarajaText(required=False)
    MiddleName = DarajaText(required=False)
    LastName = DarajaText(required=False)

    def transaction(self) -> C2BTransaction:
        data = self.validated_data
        return C2BTransaction(
            trans_id=data["TransID"].strip(),
            trans_time=data["TransTime"],
            trans_amount=data["TransAmount"],
            bill_ref_number=data["BillRefNumber"],
            msisdn=data["MSISDN"],
            first_name=data["FirstName"],
            middle_name=data["MiddleName"],
            last_name=data["LastName"],
            business_short_code=data["BusinessShortCode"],
            transaction_type=data["TransactionType"],
        )


class C2BConfirmationSerializer(C2BValidationSerializer):
    """Daraja's C2B v1 body, as sent to the confirmation URL: the money has moved."""

    TransID = DarajaText(allow_blank=False, help_text="M-Pesa's transaction id: the payment counts once per id.")
    TransTime = DarajaText(allow_blank=False, help_text="YYYYMMDDHHMMSS in East Africa Time (Africa/Nairobi).")
    TransAmount = DarajaText(allow_blank=False, help_text='The amount in KES as a string, e.g. "10.00".')


class ValidationAnswerSerializer(serializers.Serializer):
    ResultCode = serializers.ChoiceField(
        choices=[code.value for code in ValidationResult],
        help_text="0 accepted; C2B00012 invalid account number; C2B00013 invalid amount; C2B00016 other error.",
    )
    ResultDesc = serializers.CharField()


class ConfirmationAnswerSerializer(serializers.Serializer):
    ResultCode = serializers.IntegerField(help_text="0: recorded (or already recorded); 1: conflict, nothing changed.")
    ResultDesc = serializers.CharField()


class _DarajaView(APIView):
    authentication_classes = [ApiKeyAuthentication, DarajaKeyAuthentication]
    parser_classes = [DecimalJSONParser]
    required_rights = {"POST": Right.RECORD_PAYMENTS}

    def permission_denied(self, request: Request, message: str | None = None, code: str | None = None) -> NoReturn:
        if request.authenticators and not request.successful_authenticator:
            # Name both ways of sending the key; the API-wide message only knows the header.
            raise exceptions.AuthenticationFailed(
                "No API key: register the callback URL with ?key=<api key>, or send Authorization: Bearer <key>."
            )
        super().permission_denied(request, message=message, code=code)


AUTH_NOTE = (
    "\n\nAuthentication: Daraja cannot send headers, so register the callback URL with the provider's "
    "API key as the `key` query parameter, e.g. `https://<host>/api/v1/c2b/confirmation/?key=<key>`; "
    "`Authorization: Bearer <key>` works too. An unknown or revoked key is 401."
)


class C2BValidationView(_DarajaView):
    __doc__ = (
        "Daraja C2B validation: may this paybill payment go through?\n\n"
        'Answers `{"ResultCode": "0", "ResultDesc": "Accepted"}` when BillRefNumber is the number of one '
        "of the provider's contracts (exact or as commonly mistyped: case, spaces, separators, leading "
        'zeros), else `{"ResultCode": "C2B00012", "ResultDesc": "Rejected"}` so the payer can retype it; '
        "an amount that is not a positive KES amount is C2B00013. Nothing is recorded here." + AUTH_NOTE
    )

    @extend_schema(
        request=C2BValidationSerializer,
        responses={200: ValidationAnswerSerializer},
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = C2BValidationSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        transaction = form.transaction()
        provider = api_client(request).organisation
        result = validation_decision(provider=provider, transaction=transaction)
        # The key is in this request's URL: log ids only, never the URL.
        log.info("M-Pesa validation %r for %s: %s", transaction.trans_id, provider.slug, result.name)
        desc = "Accepted" if result == ValidationResult.ACCEPTED else "Rejected"
        return Response({"ResultCode": result.value, "ResultDesc": desc})


class C2BConfirmationView(_DarajaView):
    __doc__ = (
        "Daraja C2B confirmation: the payer's money has moved; record it exactly once.\n\n"
        "TransID is the transaction id: Daraja's retry with the same details answers Accepted again "
        "and credits nothing more. A payment matched to a contract (BillRefNumber as contract number "
        "or IMEI, else the payer's phone) is allocated and, when it clears the arrears, unlocks the "
        "phone at once; one that matches nothing is recorded unmatched for the finance queue, as is one "
        "paid to a BusinessShortCode the provider did not list (never credited to a contract by itself). "
        "TransTime is East Africa Time. 409 (ResultCode 1): this TransID was recorded with different "
        "details; nothing changed. 400: a field cannot be read (named in `errors`), or the provider's "
        "currency is not KES; nothing recorded." + AUTH_NOTE
    )

    @extend_schema(
        request=C2BConfirmationSerializer,
        responses={
            200: ConfirmationAnswerSerializer,
            409: OpenApiResponse(
                ConfirmationAnswerSerializer, description="This TransID was recorded with different details."
            ),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = C2BConfirmationSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        transaction = form.transaction()
        client = api_client(request)
        provider = client.organisation
        try:
            payment, created = mpesa_confirmation_ingest(
                provider=provider, transaction=transaction, actor=client, ip_address=client_ip(request)
            )
        except PaymentConflict as conflict:
            # Field names only: the values are the payer's phone and money, not for a log line.
            fields = sorted({DARAJA_FIELDS.get(name, name) for name in conflict.differences})
            log.warning(
                "M-Pesa confirmation %r for %s conflicts with payment %s (differs in %s); nothing changed",
                transaction.trans_id,
                provider.slug,
                conflict.payment.pk,
                ", ".join(fields),
            )
            return Response(
                {
                    "ResultCode": 1,
                    "ResultDesc": f"Rejected: TransID already recorded with a different {', '.join(fields)}.",
                },
                status=409,
            )
        log.info(
            "M-Pesa confirmation %r for %s: payment %s %s, %s",
            transaction.trans_id,
            provider.slug,
            payment.pk,
            "recorded" if created else "already recorded",
            payment.status,
        )
        return Response({"ResultCode": 0, "ResultDesc": "Accepted"})
