from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from devices import panels  # noqa: PLC0415 - it imports models, not loaded when apps.py is

        panels.register()
