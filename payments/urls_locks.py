from django.urls import path

from payments import views

app_name = "locks"

urlpatterns = [
    path("policy/", views.lock_policy, name="policy"),
    path("screen/", views.lock_screen_texts, name="screen"),
    path("screen/<str:language>/", views.lock_screen_texts, name="screen_language"),
    path("paid-still-locked/", views.paid_still_locked_list, name="paid_still_locked"),
]
