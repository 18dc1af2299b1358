"""URLs of the console pages (wired in portal/urls.py)."""

app_name = "console"
urlpatterns: list = []
