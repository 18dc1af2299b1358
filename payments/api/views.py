from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from devices.models import Device
from devices.selectors import devices_by_imei
from payments.api.serializers import (
    ContractCreateSerializer,
    ContractDetailSerializer,
    ContractListSerializer,
    PaymentCreateSerializer,
    PaymentSerializer,
)
from payments.models import ChannelKind, Contract, ContractStatus, Payment, PaymentStatus, StatementImport
from payments.selectors import contracts_with_totals
from payments.services import PaymentConflict, contract_create, customer_create, payment_ingest
from portal.api.pagination import NewestFirstPagination
from portal.api.parsers import JSONParser
from portal.api.schema import ErrorSerializer
from portal.http import client_ip
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


class PaymentFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=PaymentStatus.choices)
    channel = filters.ChoiceFilter(choices=ChannelKind.choices)
    contract_number = filters.CharFilter(field_name="contract__number")

    class Meta:
        model = Payment
        fields = ["status", "channel", "contract_number"]


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

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Payment.objects.none()
        return scope(
            Payment.objects.select_related("contract").prefetch_related("allocations__installment"),
            self.request.user,
        )

    @extend_schema(
        request=PaymentCreateSerializer,
        responses={
            201: PaymentSerializer,
            200: OpenApiResponse(PaymentSerializer, description="Already recorded with the same details."),
            409: OpenApiResponse(ErrorSerializer, description="Already recorded with different details."),
        },
    )
    def post(self, request, *args, **kwargs):
        form = PaymentCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            payment, created = payment_ingest(
                provider=request.user.organisation,
                actor=request.user,
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

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Payment.objects.none()
        return scope(
            Payment.objects.select_related("contract").prefetch_related("allocations__installment"),
            self.request.user,
        )


# --- statements: a provider's system uploads its bank statements --------------------------------


class StatementUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="MT940, camt.053/054 (XML) or a CSV export; up to 50 MB.")
    format = serializers.ChoiceField(
        choices=["", "mt940", "camt053", "camt054", "csv"],
        required=False,
        default="",
        help_text="Empty: detected from the content.",
    )
    csv_mapping = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=60, help_text="A saved CSV column mapping's name."
    )


class StatementImportSerializer(serializers.ModelSerializer):
    summary = serializers.JSONField(
        read_only=True,
        help_text="When done: rows, credits, debits, returns, duplicates, errors, matched, unmatched, "
        "not_credited, and error_lines (line, reason) for what could not be read.",
    )

    class Meta:
        model = StatementImport
        fields = [
            "id",
            "filename",
            "format",
            "status",
            "total_lines",
            "processed_lines",
            "summary",
            "error",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


class StatementListCreateView(generics.ListCreateAPIView):
    """Upload a bank statement for import (202; the import runs in the background), or list the imports."""

    serializer_class = StatementImportSerializer
    pagination_class = NewestFirstPagination
    parser_classes = [MultiPartParser]
    required_rights = {"GET": Right.IMPORT_STATEMENTS, "POST": Right.IMPORT_STATEMENTS}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return StatementImport.objects.none()
        return scope(StatementImport.objects.all(), self.request.user)

    @extend_schema(
        request={"multipart/form-data": StatementUploadSerializer},
        responses={
            202: OpenApiResponse(StatementImportSerializer, description="Stored; follow it at its URL."),
            400: OpenApiResponse(ErrorSerializer, description="Empty or oversized file, unknown mapping or format."),
        },
    )
    def post(self, request, *args, **kwargs):
        from payments.imports import statement_import_create, statement_imports_enqueue

        form = StatementUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        try:
            record = statement_import_create(
                provider=request.user.organisation,
                filename=upload.name,
                raw=upload.read(),
                actor=request.user,
                format=form.validated_data["format"] or None,
                csv_mapping=form.validated_data["csv_mapping"],
                ip_address=client_ip(request),
            )
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from None
        # Never fails the upload: with the broker down the import waits, stored, for the periodic re-queue.
        transaction.on_commit(lambda: statement_imports_enqueue([record.pk]))
        record.refresh_from_db()
        return Response(StatementImportSerializer(record).data, status=status.HTTP_202_ACCEPTED)


class StatementDetailView(generics.RetrieveAPIView):
    """One statement import: its status, progress and, when done, its summary."""

    serializer_class = StatementImportSerializer
    required_rights = {"GET": Right.IMPORT_STATEMENTS}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return StatementImport.objects.none()
        return scope(StatementImport.objects.all(), self.request.user)
