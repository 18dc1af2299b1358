"""URLs of the dashboard pages (wired in config/urls.py)."""

from django.urls import path

from dashboard import views

app_name = "dashboard"
urlpatterns = [
    path("", views.dashboard, name="home"),
    path("daily.csv", views.dashboard_daily_csv, name="daily_csv"),
]
