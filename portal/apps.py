from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed


class PortalConfig(AppConfig):
    name = "portal"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Sign-in events come from django.contrib.auth and django-axes, whichever
        # view signed the user in (portal or admin); listening to auth's own
        # signals is the only way to audit every path. This is infrastructure,
        # not domain logic.
        from portal import auth_audit, panels  # noqa: PLC0415 - they import models, not loaded when apps.py is

        panels.register()

        user_logged_in.connect(auth_audit.on_login, dispatch_uid="audit-login")
        user_logged_out.connect(auth_audit.on_logout, dispatch_uid="audit-logout")
        user_login_failed.connect(auth_audit.on_login_failed, dispatch_uid="audit-login-failed")
