"""The provider event payments sends (``payment.matched``), described for the OpenAPI document.

The body is built by ``payments.ledger.confirm.payment_apply`` (one payment) and
``payments.statements.reconcile.statement_lines_credit`` (a statement's credits); a test holds every
body finlock sends to this description (tests/test_provider_webhooks.py).
"""

from __future__ import annotations

from rest_framework import serializers

from payments.models import MONEY, ChannelKind
from portal.api.webhook_schema import WebhookEventSerializer, event_name_field, webhook

#: How a payment found its contract (``Payment.match_rule``), in the order they are tried.
MATCH_RULES = [
    ("contract_number", "The payment named the contract (API or portal)."),
    ("reference_exact", "The payer's reference is the contract number."),
    ("reference_normalised", "The contract number inside the reference, spaces, dashes and zeros aside."),
    ("imei", "The phone's IMEI in the reference."),
    ("payer_phone", "The payer's phone is the customer's, on exactly one live contract."),
    ("manual", "Matched by a person on the portal."),
]


class PaymentMatchedDataSerializer(serializers.Serializer):
    payment = serializers.IntegerField(help_text="The payment's id in the provider API (`/api/v1/payments/{id}/`).")
    external_id = serializers.CharField(help_text="The channel's transaction id.")
    channel = serializers.ChoiceField(choices=ChannelKind.choices)
    amount = serializers.DecimalField(
        max_digits=MONEY["max_digits"],
        decimal_places=MONEY["decimal_places"],
        help_text="In `currency`, as a decimal string.",
    )
    currency = serializers.CharField(min_length=3, max_length=3, help_text="ISO 4217, the provider's currency.")
    contract = serializers.CharField(help_text="The contract number the payment was matched to.")
    rule = serializers.ChoiceField(choices=MATCH_RULES, help_text="How the payment found its contract.")
    received_at = serializers.DateTimeField(help_text="When the channel received the money (UTC).")


class PaymentMatchedSerializer(WebhookEventSerializer):
    """The body of ``payment.matched``."""

    event = event_name_field("payment.matched")
    data = PaymentMatchedDataSerializer()  # type: ignore[assignment]  # the event's field "data", not Serializer.data


PAYMENT_MATCHED = webhook(
    "payment.matched",
    body=PaymentMatchedSerializer,
    summary="A payment was matched to a contract",
    description="Sent once per matched payment, in the transaction that matched it: from the API, "
    "an M-Pesa callback, a statement import or a person on the portal. The contract's lock is "
    "decided at once; `device.unlocked` follows when the phone confirms an unlock.",
)
