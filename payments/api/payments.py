"""Payments in the provider API: record one exactly once (keyed by channel + external_id), list, read one."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from payments.api.base import api_client
from payments.ledger.errors import PaymentConflict
from payments.ledger.services import payment_ingest
from payments.models import ChannelKind, Payment, PaymentStatus
from portal.api.pagination import NewestFirstPagination
from portal.api.parsers import JSONParser
from portal.api.schema import ErrorSerializer
from portal.http import client_ip
from portal.permissions import Right, scope

# --- serializers -------------------------------------------------------------------------------


class PaymentAllocationSerializer(serializers.Serializer):
    installment = serializers.IntegerField(source="installment.number", allow_null=True, default=None)
    amount = serializers.DecimalField(max_digits=14, decimal_places=2)


class PaymentSerializer(serializers.ModelSerializer):
    """A payment as recorded: what was received, which contract it went to and how."""

    contract_number = serializers.CharField(source="contract.number", default=None, allow_null=True)
    allocations = serializers.SerializerMethodField()

    class Meta:
        model = Payment
        fields = [
            "id",
            "external_id",
            "channel",
            "amount",
            "currency",
            "reference",
            "payer_phone",
            "payer_name",
            "received_at",
            "source",
            "status",
            "held_amount",
            "contract_number",
            "match_rule",
            "match_confidence",
            "verified_at",
            "reversed_at",
            "allocations",
        ]
        extra_kwargs = {
            "held_amount": {
                "help_text": "Of a provisional payment (recorded by an agent from a customer's receipt): the part "
                "not credited until it is confirmed. Posting the channel's own record of it (same channel, "
                "external_id, amount and currency) confirms it."
            }
        }

    @extend_schema_field(PaymentAllocationSerializer(many=True))
    def get_allocations(self, payment: Payment) -> list[dict[str, Any]]:
        return [
            # Decimal as a string, like every amount in this API (never a float).
            {"installment": a.installment.number if a.installment is not None else None, "amount": str(a.amount)}
            for a in payment.allocations.all()
            if a.reversed_at is None
        ]


class PaymentCreateSerializer(serializers.Serializer):
    """A payment from the provider's systems. ``external_id`` makes a retry safe: same body → same payment."""

    external_id = serializers.CharField(max_length=100, help_text="The transaction id, unique per channel.")
    channel = serializers.ChoiceField(choices=ChannelKind.choices)
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, help_text="In the contract's currency.")
    currency = serializers.CharField(max_length=3, min_length=3)
    received_at = serializers.DateTimeField(help_text="With its time zone, e.g. 2026-11-23T09:15:00+03:00.")
    reference = serializers.CharField(max_length=140, required=False, allow_blank=True, default="")
    payer_phone = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    payer_name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
    contract_number = serializers.CharField(
        max_length=40, required=False, allow_blank=True, default="", help_text="When known; else matched by reference."
    )


# --- views -------------------------------------------------------------------------------------


class PaymentFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=PaymentStatus.choices)
    channel = filters.ChoiceFilter(choices=ChannelKind.choices)
    contract_number = filters.CharFilter(field_name="contract__number")

    class Meta:
        model = Payment
        fields = ["status", "channel", "contract_number"]


def _visible_payments(view: generics.GenericAPIView) -> QuerySet[Payment]:
    """The caller's payments with what their representation reads (one query for every allocation)."""
    if getattr(view, "swagger_fake_view", False):  # schema generation has no API client
        return Payment.objects.none()
    return scope(
        Payment.objects.select_related("contract").prefetch_related("allocations__installment"),
        view.request.user,
    )


class PaymentListCreateView(generics.ListCreateAPIView):
    """Record a payment exactly once (keyed by channel + external_id), or list this provider's payments.

    201: recorded now. 200: this transaction was already recorded with the same details.
    409: already recorded with different details (``errors`` names each difference).
    A payment that clears the arrears unlocks the phone at once.

    A transaction an agent recorded from a customer's receipt (``status`` provisional, part of it
    ``held_amount``) is confirmed by posting it here with the same channel, external_id, amount
    and currency (200, now verified, the held part credited); a different amount or contract is
    409 and flags it to the provider's finance staff. Nothing is ever credited twice.
    """

    serializer_class = PaymentSerializer
    pagination_class = NewestFirstPagination
    parser_classes = [JSONParser]
    filterset_class = PaymentFilter
    required_rights = {"GET": Right.VIEW_FINANCE, "POST": Right.RECORD_PAYMENTS}

    def get_queryset(self) -> QuerySet[Payment]:
        return _visible_payments(self)

    @extend_schema(
        request=PaymentCreateSerializer,
        responses={
            201: PaymentSerializer,
            200: OpenApiResponse(PaymentSerializer, description="Already recorded with the same details."),
            409: OpenApiResponse(ErrorSerializer, description="Already recorded with different details."),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = PaymentCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        client = api_client(request)
        try:
            payment, created = payment_ingest(
                provider=client.organisation,
                actor=client,
                ip_address=client_ip(request),
                source="api",
                **form.validated_data,
            )
        except PaymentConflict as conflict:
            return Response(
                {
                    "detail": "This transaction id is already recorded with different details; nothing was changed.",
                    "errors": conflict.message_dict,
                    "payment": PaymentSerializer(conflict.payment).data,
                },
                status=status.HTTP_409_CONFLICT,
            )
        payment = self.get_queryset().get(pk=payment.pk)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(PaymentSerializer(payment).data, status=code)


class PaymentDetailView(generics.RetrieveAPIView):
    """One payment by its id, with its allocations."""

    serializer_class = PaymentSerializer
    required_rights = {"GET": Right.VIEW_FINANCE}

    def get_queryset(self) -> QuerySet[Payment]:
        return _visible_payments(self)
