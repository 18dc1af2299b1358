from django.urls import path, register_converter

from payments.api import contracts, mpesa, payments, statements


class ContractNumberConverter:
    """Any contract number, slashes and all (``DLG/2026/7``), up to the final ``/``.

    ``<path:…>`` would stop at a newline and ``<str:…>`` at a slash; either way
    such a URL fell through to Django's HTML 404 instead of the API's JSON one.
    """

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ContractNumberConverter, "contract_number")

urlpatterns = [
    path("payments/", payments.PaymentListCreateView.as_view(), name="api-payments"),
    path("payments/<int:pk>/", payments.PaymentDetailView.as_view(), name="api-payment"),
    path("contracts/", contracts.ContractListCreateView.as_view(), name="api-contracts"),
    path("statements/", statements.StatementListCreateView.as_view(), name="api-statements"),
    path("statements/<int:pk>/", statements.StatementDetailView.as_view(), name="api-statement"),
    # Safaricom Daraja C2B callbacks (payments/api/mpesa.py).
    # Safaricom refuses to register callback URLs containing words such as "mpesa" or
    # "safaricom", hence the neutral /c2b/ paths.
    path("c2b/validation/", mpesa.C2BValidationView.as_view(), name="api-mpesa-c2b-validation"),
    path("c2b/confirmation/", mpesa.C2BConfirmationView.as_view(), name="api-mpesa-c2b-confirmation"),
    # Providers' own contract numbers often contain slashes (DLG/2026/7), so the
    # number takes the rest of the path: any sub-resource must be routed above this line.
    path("contracts/<contract_number:number>/", contracts.ContractDetailView.as_view(), name="api-contract"),
]
