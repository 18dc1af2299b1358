"""URLs of the dashboard pages (wired in config/urls.py)."""

from django.urls import path

from payments import views_dashboard

app_name = "dashboard"
urlpatterns = [
    path("", views_dashboard.dashboard, name="home"),
    path("daily.csv", views_dashboard.dashboard_daily_csv, name="daily_csv"),
]
