from django.shortcuts import get_object_or_404
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.api.serializers import (
    BulkReportSerializer,
    BulkUploadSerializer,
    DeviceCreateSerializer,
    DeviceSerializer,
)
from devices.models import Device, LockState
from devices.selectors import devices_by_imei
from devices.services.registry import BulkUploadError, bulk_upload_check_size, device_bulk_upload, device_create
from portal.api.pagination import NewestFirstPagination
from portal.api.parsers import JSONParser
from portal.api.schema import ErrorSerializer
from portal.http import client_ip
from portal.permissions import Right, scope


class DeviceFilter(filters.FilterSet):
    desired_state = filters.ChoiceFilter(choices=LockState.choices)
    reported_state = filters.ChoiceFilter(choices=LockState.choices)
    maker = filters.CharFilter(lookup_expr="iexact")

    class Meta:
        model = Device
        fields = ["desired_state", "reported_state", "maker"]


class DeviceListCreateView(generics.ListCreateAPIView):
    """List this provider's devices, or register one."""

    serializer_class = DeviceSerializer
    pagination_class = NewestFirstPagination
    filterset_class = DeviceFilter
    # One device is JSON, and the schema says so: a generated client gets one request body type
    # (a CSV of many devices goes to the bulk upload).
    parser_classes = [JSONParser]
    required_rights = {"GET": Right.VIEW_DEVICES, "POST": Right.MANAGE_DEVICES}

    def get_queryset(self):
        return scope(Device.objects.all(), self.request.user)

    @extend_schema(request=DeviceCreateSerializer, responses={201: DeviceSerializer})
    def post(self, request, *args, **kwargs):
        data = DeviceCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = device_create(
            provider=request.user.organisation, actor=request.user, ip_address=client_ip(request), **data.validated_data
        )
        return Response(DeviceSerializer(device).data, status=status.HTTP_201_CREATED)


class DeviceDetailView(generics.RetrieveAPIView):
    """One device by IMEI (first or second; spaces and dashes are ignored)."""

    serializer_class = DeviceSerializer
    required_rights = {"GET": Right.VIEW_DEVICES}

    def get_object(self):
        qs = devices_by_imei(scope(Device.objects.all(), self.request.user), self.kwargs["imei"])
        return get_object_or_404(qs.order_by("id")[:1])


class DeviceBulkUploadView(APIView):
    """Register up to 100,000 devices from a CSV with a line-by-line error report."""

    parser_classes = [MultiPartParser]
    required_rights = {"POST": Right.MANAGE_DEVICES}

    @extend_schema(
        request={"multipart/form-data": BulkUploadSerializer},
        responses={
            201: OpenApiResponse(BulkReportSerializer, description="Devices created; rejected lines listed."),
            422: OpenApiResponse(BulkReportSerializer, description="Nothing created; every bad line listed."),
            400: OpenApiResponse(
                ErrorSerializer, description="The file cannot be read at all (errors.file says why); nothing created."
            ),
        },
    )
    def post(self, request):
        form = BulkUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        try:
            # Before reading: the service checks the size too, but only once the
            # whole file has been loaded into memory.
            bulk_upload_check_size(upload.size)
            report = device_bulk_upload(
                provider=request.user.organisation,
                actor=request.user,
                raw=upload.read(),
                mode=form.validated_data["mode"],
                ip_address=client_ip(request),
            )
        except BulkUploadError as exc:
            raise ValidationError({"file": [str(exc)]}) from None
        code = status.HTTP_201_CREATED if report.created else status.HTTP_422_UNPROCESSABLE_ENTITY
        return Response(report.as_dict(), status=code)
