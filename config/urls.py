from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from portal.views import admin_login

api_v1 = [
    path("", include("devices.api.urls")),
    path("", include("payments.api.urls")),
]

urlpatterns = [
    # What phones call (docs/lock-pipeline.md): device credentials, not provider API keys.
    # First, because every enrolled phone checks in every few minutes: the busiest path
    # should not be tried against every other pattern before it matches.
    path("api/device/v1/", include("devices.api.device_urls")),
    path("", include("portal.urls_portal")),
    path("devices/", include("devices.urls")),
    path("contracts/", include("payments.urls")),
    path("locks/", include("payments.urls_locks")),
    # The admin signs in through the portal, so django-axes and two-factor apply there too;
    # a signed-in user without staff access gets 403 instead of a redirect loop.
    path("admin/login/", admin_login),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    # The people's side: agent console, cases, reviews and unlock requests, dashboards,
    # and the owners' public self-service page.
    path("console/", include("support.urls_console")),
    path("support/", include("support.urls")),
    path("dashboard/", include("dashboard.urls")),
    path("my-phone/", include("selfservice.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]
