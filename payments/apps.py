from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from payments import panels  # noqa: PLC0415 - panels read models, which load only once the registry is ready

        panels.register()
