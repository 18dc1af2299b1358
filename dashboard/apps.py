from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"

    def ready(self) -> None:
        from dashboard import panels  # noqa: PLC0415 - panels import models, which load only once the app registry is ready

        panels.register()
