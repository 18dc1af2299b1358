from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from devices.models import Device
from devices.selectors import devices_by_imei
from payments.api.serializers import ContractCreateSerializer, ContractDetailSerializer, ContractListSerializer
from payments.models import Contract, ContractStatus
from payments.selectors import contracts_with_totals
from payments.services import contract_create, customer_create
from portal.api.pagination import NewestFirstPagination
from portal.api.utils import client_ip
from portal.permissions import Right, scope


class ContractFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=ContractStatus.choices)
    device_imei = filters.CharFilter(field_name="device__imei")

    class Meta:
        model = Contract
        fields = ["status", "device_imei"]


class ContractListCreateView(generics.ListCreateAPIView):
    """List this provider's contracts with paid and arrears totals, or create one with its schedule."""

    serializer_class = ContractListSerializer
    pagination_class = NewestFirstPagination
    # JSON only: the nested customer cannot be sent as a multipart form, yet the
    # default parsers advertised multipart in the schema and then rejected it.
    parser_classes = [JSONParser]
    filterset_class = ContractFilter
    required_rights = {"GET": Right.VIEW_FINANCE, "POST": Right.MANAGE_CONTRACTS}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no API client
            return Contract.objects.none()
        provider = self.request.user.organisation
        qs = scope(Contract.objects.select_related("device", "customer"), self.request.user)
        return contracts_with_totals(qs, today=provider.today())

    @extend_schema(request=ContractCreateSerializer, responses={201: ContractDetailSerializer})
    def post(self, request, *args, **kwargs):
        form = ContractCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        provider = request.user.organisation
        device = devices_by_imei(scope(Device.objects.all(), request.user), data.pop("device_imei")).first()
        if device is None:
            return Response(
                {
                    "detail": "The request is invalid; nothing was changed.",
                    "errors": {"device_imei": ["No device with this IMEI is registered for this provider."]},
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        customer_data = data.pop("customer")
        ip = client_ip(request)
        # Customer and contract are created together or not at all.
        with transaction.atomic():
            try:
                customer = customer_create(provider=provider, actor=request.user, ip_address=ip, **customer_data)
            except DjangoValidationError as exc:
                # The client sent these fields nested under "customer": report them there.
                raise ValidationError({"customer": _field_errors(exc)}) from None
            try:
                contract = contract_create(
                    provider=provider, actor=request.user, device=device, customer=customer, ip_address=ip, **data
                )
            except DjangoValidationError as exc:
                # Name the request's fields, not the service's arguments ("device" is device_imei here).
                errors = _field_errors(exc)
                raise ValidationError({SERVICE_TO_REQUEST.get(k, k): v for k, v in errors.items()}) from None
        return Response(ContractDetailSerializer(contract).data, status=status.HTTP_201_CREATED)


# contract_create's argument names that differ from the request's field names.
SERVICE_TO_REQUEST = {"device": "device_imei", NON_FIELD_ERRORS: "non_field_errors"}


def _field_errors(exc: DjangoValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return exc.message_dict
    return {"non_field_errors": exc.messages}


class ContractDetailView(generics.RetrieveAPIView):
    """One contract by number, with schedule, balance, arrears and next due."""

    serializer_class = ContractDetailSerializer
    required_rights = {"GET": Right.VIEW_FINANCE}

    def get_object(self):
        number = self.kwargs["number"]
        if "\x00" in number:  # PostgreSQL refuses NUL in a query (a 500); no number contains one
            raise Http404
        qs = scope(Contract.objects.select_related("device", "customer", "provider"), self.request.user)
        return get_object_or_404(qs, number=number)
