from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from devices.api import device_views
from devices.api.device_schema import DEVICE_SCHEMA_SETTINGS

api_patterns = [
    path("enroll", device_views.EnrollView.as_view(), name="device-api-enroll"),
    path("enroll/challenge", device_views.EnrollChallengeView.as_view(), name="device-api-enroll-challenge"),
    path("checkin", device_views.CheckinView.as_view(), name="device-api-checkin"),
    path("ack", device_views.AckView.as_view(), name="device-api-ack"),
]

urlpatterns = [
    *api_patterns,
    path(
        "schema/",
        SpectacularAPIView.as_view(
            patterns=[path("api/device/v1/", include(api_patterns))], custom_settings=DEVICE_SCHEMA_SETTINGS
        ),
        name="device-api-schema",
    ),
]
