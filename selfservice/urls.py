"""URLs of the selfservice pages (wired in config/urls.py at /my-phone/): public, no login."""

from django.urls import path

from selfservice import views

app_name = "selfservice"
urlpatterns = [
    path("", views.phone_status, name="status"),
]
