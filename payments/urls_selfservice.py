"""URLs of the selfservice pages (wired in config/urls.py at /my-phone/): public, no login."""

from django.urls import path

from payments import views_selfservice

app_name = "selfservice"
urlpatterns = [
    path("", views_selfservice.phone_status, name="status"),
]
