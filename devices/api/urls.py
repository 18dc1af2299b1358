from django.urls import path

from devices.api import views

urlpatterns = [
    path("devices/", views.DeviceListCreateView.as_view(), name="api-devices"),
    path("devices/bulk/", views.DeviceBulkUploadView.as_view(), name="api-devices-bulk"),
    path("devices/<str:imei>/", views.DeviceDetailView.as_view(), name="api-device"),
]
