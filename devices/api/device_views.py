"""The device API (``/api/device/v1/``): what phones call. The work is in ``devices.services``
(``enrolment`` and ``checkin``)."""

import functools

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from devices import checkin_cache
from devices.api.device_auth import (
    DeviceCredentialAuthentication,
    DeviceEnrollRateThrottle,
    DeviceRateThrottle,
    IsEnrolledDevice,
)
from devices.api.device_serializers import (
    AckAnswerSerializer,
    AckSerializer,
    ChallengeAnswerSerializer,
    CheckinAnswerSerializer,
    CheckinSerializer,
    EnrollAnswerSerializer,
    EnrollSerializer,
)
from devices.keys import key_statements
from devices.services.checkin import device_ack, device_checkin
from devices.services.enrolment import device_enroll, enrollment_challenge_issue
from portal.api.parsers import JSONParser
from portal.api.schema import ErrorSerializer
from portal.http import client_ip

REFUSED = OpenApiResponse(
    ErrorSerializer, description="Invalid body, or enrolment refused: one answer for every refusal, revealing nothing."
)
INVALID = OpenApiResponse(ErrorSerializer, description="Invalid body; `errors` names each field to fix.")
UNAUTHORISED = OpenApiResponse(ErrorSerializer, description="Missing or invalid device credential (enrol again).")
THROTTLED = OpenApiResponse(ErrorSerializer, description="Too many requests; retry after the Retry-After header.")


class DeviceApiView(APIView):
    """A phone's call: device credential, JSON only, rate-limited per device."""

    authentication_classes = [DeviceCredentialAuthentication]
    permission_classes = [IsEnrolledDevice]
    throttle_classes = [DeviceRateThrottle]
    parser_classes = [JSONParser]


class EnrollChallengeView(DeviceApiView):
    """A fresh challenge for the phone to sign before it enrols; the same for every caller, it reveals nothing."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [DeviceEnrollRateThrottle]

    @extend_schema(
        tags=["device"],
        operation_id="device_enroll_challenge",
        request=None,
        responses={200: ChallengeAnswerSerializer, 429: THROTTLED},
    )
    def post(self, request):
        return Response(enrollment_challenge_issue())


class EnrollView(DeviceApiView):
    """Enrol a phone with its IMEI, the provider's enrolment token and a signed challenge.

    A device already enrolled must sign with the device key it registered, or bring a
    re-enrolment code from its provider; answers its credential and current command.
    """

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [DeviceEnrollRateThrottle]

    @extend_schema(
        tags=["device"],
        operation_id="device_enroll",
        request=EnrollSerializer,
        responses={201: EnrollAnswerSerializer, 400: REFUSED, 429: THROTTLED},
    )
    def post(self, request):
        form = EnrollSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        enrollment = device_enroll(
            imei=data["imei"],
            token_secret=data["enrollment_token"],
            device_key=data["device_key"],
            challenge=data["challenge"],
            signature=data["signature"],
            reenrollment_code=data["reenrollment_code"],
            app_version=data["app_version"],
            ip_address=client_ip(request),
        )
        return Response(enrollment.as_dict(), status=status.HTTP_201_CREATED)


class CheckinView(DeviceApiView):
    """Report what the phone shows; answers the current signed command (a missed push heals here).

    With Redis, a routine check-in never reaches this view: ``devices.checkin_cache``
    answers it first, and whatever it cannot answer comes here and refills its record.
    """

    @classmethod
    def as_view(cls, **initkwargs):
        view = super().as_view(**initkwargs)

        def checkin(request, *args, **kwargs):
            return checkin_cache.answer(request) or view(request, *args, **kwargs)

        # Keeps .cls, .initkwargs and csrf_exempt, which the schema generator and Django read.
        return functools.wraps(view)(checkin)

    @extend_schema(
        tags=["device"],
        operation_id="device_checkin",
        request=CheckinSerializer,
        responses={200: CheckinAnswerSerializer, 400: INVALID, 401: UNAUTHORISED, 429: THROTTLED},
    )
    def post(self, request):
        form = CheckinSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        envelope = device_checkin(device=request.auth, **form.validated_data)
        checkin_cache.fill(request.auth.pk)
        # The key statements too: a phone learns a key announced for a rotation before it signs.
        return Response({"envelope": envelope, "key_statements": key_statements()})


class AckView(DeviceApiView):
    """Acknowledge an applied command; an older or repeated acknowledgement is accepted and ignored."""

    @extend_schema(
        tags=["device"],
        operation_id="device_ack",
        request=AckSerializer,
        responses={200: AckAnswerSerializer, 400: INVALID, 401: UNAUTHORISED, 429: THROTTLED},
    )
    def post(self, request):
        form = AckSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        device_ack(device=request.auth, **form.validated_data)
        return Response({"ok": True})
