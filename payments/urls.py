from django.urls import path

from payments.contracts import views as contracts
from payments.ledger import views as ledger
from payments.statements import views as statements

app_name = "payments"

urlpatterns = [
    path("statements/", statements.statement_list, name="statements"),
    path("statements/<int:pk>/", statements.statement_detail, name="statement"),
    path("statements/mappings/", statements.csv_mapping_list, name="csv_mappings"),
    path("statements/mappings/new/", statements.csv_mapping_new, name="csv_mapping_new"),
    path("statements/mappings/<int:pk>/", statements.csv_mapping_edit, name="csv_mapping_edit"),
    path("statements/mappings/<int:pk>/delete/", statements.csv_mapping_delete, name="csv_mapping_delete"),
    path("", contracts.contract_list, name="contracts"),
    path("<int:pk>/", contracts.contract_detail, name="contract"),
    path("<int:pk>/verify-payment/", ledger.contract_verify_payment, name="verify_payment"),
    path("payments/", ledger.payment_list, name="payments"),
    path("payments/<int:pk>/", ledger.payment_detail, name="payment"),
    path("payments/<int:pk>/match/", ledger.payment_match, name="payment_match"),
    path("payments/<int:pk>/verify/", ledger.payment_verify_view, name="payment_verify"),
    path("payments/<int:pk>/confirm/", ledger.payment_confirm_view, name="payment_confirm"),
    path("payments/<int:pk>/reverse/", ledger.payment_reverse_view, name="payment_reverse"),
    path("payments/proofs/<int:pk>/", ledger.payment_proof_download, name="proof"),
]
