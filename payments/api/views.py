from django.db import transaction
from django.shortcuts import get_object_or_404
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
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
            customer = customer_create(provider=provider, actor=request.user, ip_address=ip, **customer_data)
            contract = contract_create(
                provider=provider, actor=request.user, device=device, customer=customer, ip_address=ip, **data
            )
        return Response(ContractDetailSerializer(contract).data, status=status.HTTP_201_CREATED)


class ContractDetailView(generics.RetrieveAPIView):
    """One contract by number, with schedule, balance, arrears and next due."""

    serializer_class = ContractDetailSerializer
    required_rights = {"GET": Right.VIEW_FINANCE}

    def get_object(self):
        qs = scope(Contract.objects.select_related("device", "customer", "provider"), self.request.user)
        return get_object_or_404(qs, number=self.kwargs["number"])
