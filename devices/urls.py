from django.urls import path

from devices import views

app_name = "devices"

urlpatterns = [
    path("", views.device_list, name="list"),
    path("<int:pk>/", views.device_detail, name="detail"),
    path("<int:pk>/reenrollment-code/", views.device_reenrollment_code, name="reenrollment_code"),
    path("enrolment-tokens/", views.enrollment_tokens, name="enrollment_tokens"),
    path("enrolment-tokens/<int:pk>/revoke/", views.enrollment_token_revoke_view, name="enrollment_token_revoke"),
    path("dead-letters/", views.dead_letters, name="dead_letters"),
    path("dead-letters/<int:pk>/retry/", views.dead_letter_retry, name="dead_letter_retry"),
]
