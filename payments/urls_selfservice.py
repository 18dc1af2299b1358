"""URLs of the selfservice pages (wired in portal/urls.py)."""

app_name = "selfservice"
urlpatterns: list = []
