from django.urls import path

from payments import views

app_name = "payments"

urlpatterns = [
    path("", views.contract_list, name="contracts"),
    path("<int:pk>/", views.contract_detail, name="contract"),
]
