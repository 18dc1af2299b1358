from django.urls import path

from payments import views

app_name = "payments"

urlpatterns = [
    path("statements/", views.statement_list, name="statements"),
    path("statements/<int:pk>/", views.statement_detail, name="statement"),
    path("statements/mappings/", views.csv_mapping_list, name="csv_mappings"),
    path("statements/mappings/new/", views.csv_mapping_new, name="csv_mapping_new"),
    path("statements/mappings/<int:pk>/", views.csv_mapping_edit, name="csv_mapping_edit"),
    path("statements/mappings/<int:pk>/delete/", views.csv_mapping_delete, name="csv_mapping_delete"),
    path("", views.contract_list, name="contracts"),
    path("<int:pk>/", views.contract_detail, name="contract"),
    path("<int:pk>/verify-payment/", views.contract_verify_payment, name="verify_payment"),
    path("payments/", views.payment_list, name="payments"),
    path("payments/<int:pk>/", views.payment_detail, name="payment"),
    path("payments/<int:pk>/match/", views.payment_match, name="payment_match"),
    path("payments/<int:pk>/verify/", views.payment_verify_view, name="payment_verify"),
    path("payments/<int:pk>/confirm/", views.payment_confirm_view, name="payment_confirm"),
    path("payments/<int:pk>/reverse/", views.payment_reverse_view, name="payment_reverse"),
    path("payments/proofs/<int:pk>/", views.payment_proof_download, name="proof"),
]
