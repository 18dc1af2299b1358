"""Why a payment could not be taken or changed: the exceptions the ledger's services raise, which views and the
API turn into answers."""

from __future__ import annotations

from django.core.exceptions import ValidationError


class PaymentConflict(ValidationError):
    """The transaction id is known with different details: a conflict, never a second payment."""

    def __init__(self, payment, differences: dict[str, tuple[str, str]]):
        self.payment = payment
        self.differences = differences
        super().__init__(
            {
                name: [f"This transaction id was recorded with {old!r}; this request says {new!r}."]
                for name, (old, new) in differences.items()
            }
        )


class PaymentAlreadyVerified(ValidationError):
    """Another agent verified the payment first."""


class PaymentAlreadyRecorded(PaymentAlreadyVerified):
    """The receipt was recorded before (the same form sent twice): it waits for its confirmation."""


class WrongContract(ValidationError):
    """The transaction exists but is credited to another contract."""
