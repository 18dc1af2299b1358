from django.urls import path

from devices import views

app_name = "devices"

urlpatterns = [
    path("", views.device_list, name="list"),
    path("<int:pk>/", views.device_detail, name="detail"),
    path("dead-letters/", views.dead_letters, name="dead_letters"),
    path("dead-letters/<int:pk>/retry/", views.dead_letter_retry, name="dead_letter_retry"),
]
