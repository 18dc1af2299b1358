"""URLs of the console pages (wired in config/urls.py at ``console/``)."""

from django.urls import path

from support import console

app_name = "console"
urlpatterns = [
    path("", console.search, name="search"),
    path("devices/<int:pk>/", console.device, name="device"),
]
