from django.contrib.auth import views as auth_views
from django.urls import path

from portal import views

app_name = "portal"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("login/verify/", views.otp_verify, name="otp_verify"),
    path("account/two-factor/", views.otp_setup, name="otp_setup"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("audit/", views.audit, name="audit"),
    path("organisations/", views.organisations, name="organisations"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/webhooks/", views.webhooks, name="webhooks"),
    path("settings/webhooks/events/<int:pk>/retry/", views.webhook_event_retry_view, name="webhook_event_retry"),
]
