from django.apps import AppConfig


class SupportConfig(AppConfig):
    name = "support"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from support import panels  # noqa: PLC0415 - panels import models, which load only once the app registry is ready

        panels.register()
