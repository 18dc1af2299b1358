from django.urls import path

from payments.api import views

urlpatterns = [
    path("contracts/", views.ContractListCreateView.as_view(), name="api-contracts"),
    path("contracts/<str:number>/", views.ContractDetailView.as_view(), name="api-contract"),
]
