"""URLs of the dashboard pages (wired in portal/urls.py)."""

app_name = "dashboard"
urlpatterns: list = []
