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
    path("audit/same-browser/", views.audit_same_browser, name="audit_same_browser"),
    path("organisations/", views.organisations, name="organisations"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/api-keys/new/", views.api_key_new, name="api_key_new"),
    path("settings/api-keys/<int:pk>/rotate/", views.api_key_rotate_view, name="api_key_rotate"),
    path("settings/api-keys/<int:pk>/revoke/", views.api_key_revoke_view, name="api_key_revoke"),
    path("settings/staff/new/", views.staff_new, name="staff_new"),
    path("settings/staff/<int:pk>/", views.staff_detail, name="staff_detail"),
    path("settings/staff/<int:pk>/deactivate/", views.staff_active_view, {"active": False}, name="staff_deactivate"),
    path("settings/staff/<int:pk>/activate/", views.staff_active_view, {"active": True}, name="staff_activate"),
    path("settings/staff/<int:pk>/password-link/", views.staff_password_link_view, name="staff_password_link"),
    path("account/set-password/<uidb64>/<token>/", views.SetPasswordView.as_view(), name="set_password"),
    path("settings/webhooks/", views.webhooks, name="webhooks"),
    path("settings/webhooks/<int:pk>/rotate/", views.webhook_secret_rotate_view, name="webhook_secret_rotate"),
    path(
        "settings/webhooks/<int:pk>/end-overlap/",
        views.webhook_secret_overlap_end_view,
        name="webhook_secret_overlap_end",
    ),
    path("settings/webhooks/events/<int:pk>/retry/", views.webhook_event_retry_view, name="webhook_event_retry"),
]
