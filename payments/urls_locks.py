from django.urls import path

from payments import views

app_name = "locks"

urlpatterns = [
    path("policy/", views.lock_policy, name="policy"),
    path("paid-still-locked/", views.paid_still_locked_list, name="paid_still_locked"),
]
