"""Contracts in the provider API: list with paid and arrears totals, create with the schedule, read one."""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from devices.models import Device
from devices.selectors import devices_by_imei
from payments.api.base import api_client, money_field
from payments.contracts.selectors import ContractPosition, contract_position, contracts_with_totals, provider_today
from payments.contracts.services import contract_create, customer_create
from payments.models import Contract, ContractStatus, Customer, Frequency, Installment
from portal.api.exceptions import api_validation_error
from portal.api.pagination import NewestFirstPagination
from portal.api.parsers import JSONParser
from portal.http import client_ip
from portal.permissions import ApiClient, Right, scope

# --- serializers -------------------------------------------------------------------------------


class CustomerSerializer(serializers.ModelSerializer):
    phone = serializers.CharField(source="phone.as_e164", read_only=True)
    national_id = serializers.CharField(source="national_id_masked", read_only=True)

    class Meta:
        model = Customer
        fields = ["name", "phone", "preferred_language", "national_id"]


class CustomerInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=150)
    phone = serializers.CharField(max_length=32, help_text="E.164, or local to the provider's country.")
    preferred_language = serializers.CharField(max_length=8, required=False, allow_blank=True, default="")
    national_id = serializers.CharField(
        max_length=40, required=False, allow_blank=True, default="", help_text="Stored masked only."
    )


class ContractDeviceSerializer(serializers.Serializer):
    imei = serializers.CharField()
    maker = serializers.CharField()
    model = serializers.CharField()
    desired_state = serializers.CharField()
    reported_state = serializers.CharField()


class InstallmentSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    due_date = serializers.DateField()
    amount_due = money_field()
    amount_paid = money_field()
    status = serializers.ChoiceField(choices=["paid", "partial", "due", "overdue"])


class NextDueSerializer(serializers.Serializer):
    date = serializers.DateField()
    amount = money_field()


class ContractListSerializer(serializers.ModelSerializer):
    device_imei = serializers.CharField(source="device.imei")
    customer_name = serializers.CharField(source="customer.name")
    paid = money_field(source="paid_total")
    arrears = money_field(source="arrears_total")

    class Meta:
        model = Contract
        fields = [
            "number",
            "status",
            "currency",
            "device_imei",
            "customer_name",
            "financed_amount",
            "paid",
            "arrears",
            "installment_count",
            "frequency",
            "first_due_date",
            "created_at",
        ]


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


class _ContractFigures:
    """A contract's schedule and its position, each read when first asked for."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract

    @cached_property
    def installments(self) -> list[Installment]:
        return list(self.contract.installments.order_by("number"))

    @cached_property
    def position(self) -> ContractPosition:
        return contract_position(self.contract, installments=self.installments)


class ContractDetailSerializer(serializers.ModelSerializer):
    device = ContractDeviceSerializer()
    customer = CustomerSerializer()
    balance = serializers.SerializerMethodField()
    arrears = serializers.SerializerMethodField()
    overdue_since = serializers.SerializerMethodField()
    next_due = serializers.SerializerMethodField()
    schedule = serializers.SerializerMethodField()

    class Meta:
        model = Contract
        fields = [
            "number",
            "status",
            "currency",
            "device",
            "customer",
            "cash_price",
            "down_payment",
            "financed_amount",
            "installment_count",
            "frequency",
            "first_due_date",
            "balance",
            "arrears",
            "overdue_since",
            "next_due",
            "schedule",
            "created_at",
        ]

    # Each field below reads the same schedule and position: computed once per contract.
    _figures: _ContractFigures

    def to_representation(self, instance: Contract) -> dict[str, Any]:
        self._figures = _ContractFigures(instance)
        return super().to_representation(instance)

    def get_balance(self, obj: Contract) -> str:
        return f"{self._figures.position.balance:.2f}"

    def get_arrears(self, obj: Contract) -> str:
        return f"{self._figures.position.arrears:.2f}"

    @extend_schema_field(serializers.DateField(allow_null=True))
    def get_overdue_since(self, obj: Contract) -> str | None:
        since = self._figures.position.overdue_since
        return since.isoformat() if since else None

    @extend_schema_field(NextDueSerializer(allow_null=True))
    def get_next_due(self, obj: Contract) -> dict[str, Any] | None:
        pos = self._figures.position
        if pos.next_due_date is None:
            return None
        return {"date": pos.next_due_date.isoformat(), "amount": _money(pos.next_due_amount)}

    @extend_schema_field(InstallmentSerializer(many=True))
    def get_schedule(self, obj: Contract) -> list[dict[str, Any]]:
        today = provider_today(obj)
        return [
            {
                "number": i.number,
                "due_date": i.due_date.isoformat(),
                "amount_due": _money(i.amount_due),
                "amount_paid": _money(i.amount_paid),
                "status": i.status_on(today),
            }
            for i in self._figures.installments
        ]


class ContractCreateSerializer(serializers.Serializer):
    number = serializers.CharField(max_length=40)
    device_imei = serializers.CharField(max_length=32, help_text="A device already registered for this provider.")
    customer = CustomerInputSerializer()
    cash_price = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=0)
    # DRF hands a default over as it is: "0", as contract_create's own default and the published schema have it.
    down_payment = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        min_value=0,
        required=False,
        default="0",  # type: ignore[arg-type]  # the stubs want a Decimal; DRF takes any default
    )
    financed_amount = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        min_value=0,
        required=False,
        allow_null=True,
        default=None,
        help_text="Defaults to cash price minus down payment; may include interest and fees.",
    )
    installment_count = serializers.IntegerField(min_value=1, max_value=520)
    frequency = serializers.ChoiceField(choices=Frequency.choices)
    first_due_date = serializers.DateField()


class ContractStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=ContractStatus.choices)


# --- views -------------------------------------------------------------------------------------


class ContractFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=ContractStatus.choices)
    device_imei = filters.CharFilter(field_name="device__imei")

    class Meta:
        model = Contract
        fields = ["status", "device_imei"]


# contract_create's argument names that differ from the request's field names.
SERVICE_TO_REQUEST = {"device": "device_imei"}

UNKNOWN_DEVICE = {
    "detail": "The request is invalid; nothing was changed.",
    "errors": {"device_imei": ["No device with this IMEI is registered for this provider."]},
}


def _customer_and_contract_create(
    *, client: ApiClient, device: Device, customer_data: dict[str, Any], contract_data: dict[str, Any], ip: str | None
) -> Contract:
    """Customer and contract, created together or not at all; errors named as the request names its fields."""
    provider = client.organisation
    with transaction.atomic():
        try:
            customer = customer_create(provider=provider, actor=client, ip_address=ip, **customer_data)
        except DjangoValidationError as exc:
            # The client sent these fields nested under "customer": report them there.
            raise api_validation_error(exc, nested_under="customer") from None
        try:
            return contract_create(
                provider=provider, actor=client, device=device, customer=customer, ip_address=ip, **contract_data
            )
        except DjangoValidationError as exc:
            # Name the request's fields, not the service's arguments ("device" is device_imei here).
            raise api_validation_error(exc, renamed=SERVICE_TO_REQUEST) from None


class ContractListCreateView(generics.ListCreateAPIView):
    """List this provider's contracts with paid and arrears totals, or create one with its schedule."""

    serializer_class = ContractListSerializer
    pagination_class = NewestFirstPagination
    # JSON only: the nested customer cannot be sent as a multipart form, yet the
    # default parsers advertised multipart in the schema and then rejected it.
    parser_classes = [JSONParser]
    filterset_class = ContractFilter
    required_rights = {"GET": Right.VIEW_FINANCE, "POST": Right.MANAGE_CONTRACTS}

    def get_queryset(self) -> QuerySet[Contract]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no API client
            return Contract.objects.none()
        provider = api_client(self.request).organisation
        qs = scope(Contract.objects.select_related("device", "customer"), self.request.user)
        return contracts_with_totals(qs, today=provider.today())

    @extend_schema(request=ContractCreateSerializer, responses={201: ContractDetailSerializer})
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = ContractCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        client = api_client(request)
        device = devices_by_imei(scope(Device.objects.all(), client), data.pop("device_imei")).first()
        if device is None:
            return Response(UNKNOWN_DEVICE, status=status.HTTP_400_BAD_REQUEST)
        contract = _customer_and_contract_create(
            client=client, device=device, customer_data=data.pop("customer"), contract_data=data, ip=client_ip(request)
        )
        return Response(ContractDetailSerializer(contract).data, status=status.HTTP_201_CREATED)


class ContractDetailView(generics.RetrieveAPIView):
    """One contract by number, with schedule, balance, arrears and next due."""

    serializer_class = ContractDetailSerializer
    required_rights = {"GET": Right.VIEW_FINANCE}

    def get_object(self) -> Contract:
        number = self.kwargs["number"]
        if "\x00" in number:  # PostgreSQL refuses NUL in a query (a 500); no number contains one
            raise Http404
        qs = scope(Contract.objects.select_related("device", "customer", "provider"), self.request.user)
        return get_object_or_404(qs, number=number)
