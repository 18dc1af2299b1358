from django.urls import path, register_converter

from payments.api import views


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
    path("payments/", views.PaymentListCreateView.as_view(), name="api-payments"),
    path("payments/<int:pk>/", views.PaymentDetailView.as_view(), name="api-payment"),
    path("contracts/", views.ContractListCreateView.as_view(), name="api-contracts"),
    # Providers' own contract numbers often contain slashes (DLG/2026/7), so the
    # number takes the rest of the path: any sub-resource must be routed above this line.
    path("contracts/<contract_number:number>/", views.ContractDetailView.as_view(), name="api-contract"),
]
