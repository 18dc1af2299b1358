from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from payments.models import ChannelKind, Contract, ContractStatus, Customer, Frequency, Payment
from payments.selectors import contract_position, provider_today

MONEY = {"max_digits": 14, "decimal_places": 2, "coerce_to_string": True}


class CustomerSerializer(serializers.ModelSerializer):
    phone = serializers.CharField(source="phone.as_e164", read_only=True)
    national_id = serializers.CharField(source="national_id_masked", read_only=True)

    class Meta:
        model = Customer
        fields = ["name", "phone", "preferred_language", "national_id"]


class CustomerInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=150)
    phone = serializers.CharField(max_length=32, help_text="E.164, or local to the provider's country.")
    preferred_language = serializers.CharField(max_length=8, required=False, allow_blank=True, default="")
    national_id = serializers.CharField(
        max_length=40, required=False, allow_blank=True, default="", help_text="Stored masked only."
    )


class ContractDeviceSerializer(serializers.Serializer):
    imei = serializers.CharField()
    maker = serializers.CharField()
    model = serializers.CharField()
    desired_state = serializers.CharField()
    reported_state = serializers.CharField()


class InstallmentSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    due_date = serializers.DateField()
    amount_due = serializers.DecimalField(**MONEY)
    amount_paid = serializers.DecimalField(**MONEY)
    status = serializers.ChoiceField(choices=["paid", "partial", "due", "overdue"])


class NextDueSerializer(serializers.Serializer):
    date = serializers.DateField()
    amount = serializers.DecimalField(**MONEY)


class ContractListSerializer(serializers.ModelSerializer):
    device_imei = serializers.CharField(source="device.imei")
    customer_name = serializers.CharField(source="customer.name")
    paid = serializers.DecimalField(source="paid_total", **MONEY)
    arrears = serializers.DecimalField(source="arrears_total", **MONEY)

    class Meta:
        model = Contract
        fields = [
            "number",
            "status",
            "currency",
            "device_imei",
            "customer_name",
            "financed_amount",
            "paid",
            "arrears",
            "installment_count",
            "frequency",
            "first_due_date",
            "created_at",
        ]


class ContractDetailSerializer(serializers.ModelSerializer):
    device = ContractDeviceSerializer()
    customer = CustomerSerializer()
    balance = serializers.SerializerMethodField()
    arrears = serializers.SerializerMethodField()
    overdue_since = serializers.SerializerMethodField()
    next_due = serializers.SerializerMethodField()
    schedule = serializers.SerializerMethodField()

    class Meta:
        model = Contract
        fields = [
            "number",
            "status",
            "currency",
            "device",
            "customer",
            "cash_price",
            "down_payment",
            "financed_amount",
            "installment_count",
            "frequency",
            "first_due_date",
            "balance",
            "arrears",
            "overdue_since",
            "next_due",
            "schedule",
            "created_at",
        ]

    def _position(self, obj):
        if not hasattr(obj, "_position"):
            obj._position = contract_position(obj, installments=self._installments(obj))
        return obj._position

    def _installments(self, obj):
        if not hasattr(obj, "_installment_rows"):
            obj._installment_rows = list(obj.installments.order_by("number"))
        return obj._installment_rows

    @staticmethod
    def _money(value):
        return None if value is None else f"{value:.2f}"

    def get_balance(self, obj) -> str:
        return self._money(self._position(obj).balance)

    def get_arrears(self, obj) -> str:
        return self._money(self._position(obj).arrears)

    @extend_schema_field(serializers.DateField(allow_null=True))
    def get_overdue_since(self, obj):
        since = self._position(obj).overdue_since
        return since.isoformat() if since else None

    @extend_schema_field(NextDueSerializer(allow_null=True))
    def get_next_due(self, obj):
        pos = self._position(obj)
        if pos.next_due_date is None:
            return None
        return {"date": pos.next_due_date.isoformat(), "amount": self._money(pos.next_due_amount)}

    @extend_schema_field(InstallmentSerializer(many=True))
    def get_schedule(self, obj):
        today = self._today(obj)
        return [
            {
                "number": i.number,
                "due_date": i.due_date.isoformat(),
                "amount_due": self._money(i.amount_due),
                "amount_paid": self._money(i.amount_paid),
                "status": i.status_on(today),
            }
            for i in self._installments(obj)
        ]

    def _today(self, obj):
        return provider_today(obj)


class ContractCreateSerializer(serializers.Serializer):
    number = serializers.CharField(max_length=40)
    device_imei = serializers.CharField(max_length=32, help_text="A device already registered for this provider.")
    customer = CustomerInputSerializer()
    cash_price = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=0)
    down_payment = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=0, required=False, default="0")
    financed_amount = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        min_value=0,
        required=False,
        allow_null=True,
        default=None,
        help_text="Defaults to cash price minus down payment; may include interest and fees.",
    )
    installment_count = serializers.IntegerField(min_value=1, max_value=520)
    frequency = serializers.ChoiceField(choices=Frequency.choices)
    first_due_date = serializers.DateField()


class ContractStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=ContractStatus.choices)


class PaymentAllocationSerializer(serializers.Serializer):
    installment = serializers.IntegerField(source="installment.number", allow_null=True, default=None)
    amount = serializers.DecimalField(max_digits=14, decimal_places=2)


class PaymentSerializer(serializers.ModelSerializer):
    """A payment as recorded: what was received, which contract it went to and how."""

    contract_number = serializers.CharField(source="contract.number", default=None, allow_null=True)
    allocations = serializers.SerializerMethodField()

    class Meta:
        model = Payment
        fields = [
            "id",
            "external_id",
            "channel",
            "amount",
            "currency",
            "reference",
            "payer_phone",
            "payer_name",
            "received_at",
            "source",
            "status",
            "held_amount",
            "contract_number",
            "match_rule",
            "match_confidence",
            "verified_at",
            "reversed_at",
            "allocations",
        ]
        extra_kwargs = {
            "held_amount": {
                "help_text": "Of a provisional payment (recorded by an agent from a customer's receipt): the part "
                "not credited until it is confirmed. Posting the channel's own record of it (same channel, "
                "external_id, amount and currency) confirms it."
            }
        }

    @extend_schema_field(PaymentAllocationSerializer(many=True))
    def get_allocations(self, payment):
        return [
            # Decimal as a string, like every amount in this API (never a float).
            {"installment": a.installment.number if a.installment_id else None, "amount": str(a.amount)}
            for a in payment.allocations.all()
            if a.reversed_at is None
        ]


class PaymentCreateSerializer(serializers.Serializer):
    """A payment from the provider's systems. ``external_id`` makes a retry safe: same body → same payment."""

    external_id = serializers.CharField(max_length=100, help_text="The transaction id, unique per channel.")
    channel = serializers.ChoiceField(choices=ChannelKind.choices)
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, help_text="In the contract's currency.")
    currency = serializers.CharField(max_length=3, min_length=3)
    received_at = serializers.DateTimeField(help_text="With its time zone, e.g. 2026-11-23T09:15:00+03:00.")
    reference = serializers.CharField(max_length=140, required=False, allow_blank=True, default="")
    payer_phone = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    payer_name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
    contract_number = serializers.CharField(
        max_length=40, required=False, allow_blank=True, default="", help_text="When known; else matched by reference."
    )
