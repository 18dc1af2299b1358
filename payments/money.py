"""Money helpers: Decimal amounts with an ISO 4217 currency, never float."""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation

from babel.numbers import format_currency, get_currency_precision


def minor_units(currency: str) -> int:
    """Digits after the decimal point for ``currency`` (KES 2, JPY 0, ...)."""
    return get_currency_precision(currency)


def quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_units(currency))


def quantize(amount: Decimal, currency: str, *, rounding=ROUND_HALF_UP) -> Decimal:
    return Decimal(amount).quantize(quantum(currency), rounding=rounding)


def has_valid_precision(amount: Decimal, currency: str) -> bool:
    """True when ``amount`` has no more decimals than the currency allows."""
    return quantize(amount, currency) == amount


def split_evenly(total: Decimal, parts: int, currency: str) -> list[Decimal]:
    """Split ``total`` into ``parts`` equal amounts in the currency's minor unit.

    Each part is rounded down; the rounding remainder goes on the last part, so
    the parts always sum exactly to ``total``.
    """
    if parts < 1:
        raise ValueError("parts must be at least 1")
    share = (total / parts).quantize(quantum(currency), rounding=ROUND_DOWN)
    return [share] * (parts - 1) + [total - share * (parts - 1)]


# Always the ISO code, then a no-break space: "LKR 16,666.66" reads the same in every country
# (a bare "Rs" or "$" is ambiguous), and the amount never wraps away from its currency.
_MONEY_PATTERN = "\u00a4\u00a4\u00a0#,##0.00"


def format_money(amount: Decimal | None, currency: str, locale: str = "en") -> str:
    """``LKR 16,666.66``, ``JPY 16,667``: the currency's own number of decimals, locale-aware digits."""
    if amount is None:
        return "—"
    try:
        return format_currency(amount, currency, format=_MONEY_PATTERN, locale=locale)
    except Exception:  # an unknown locale must never break a page
        return format_currency(amount, currency, format=_MONEY_PATTERN, locale="en")


def money_from_input(value: object, field_name: str, currency: str, errors: dict[str, list[str]]) -> Decimal | None:
    """An amount someone typed or sent, in ``currency``; ``None`` with the problem under ``field_name``
    in ``errors``."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        errors[field_name] = ["Enter an amount such as 1500.00."]
        return None
    if not amount.is_finite():
        errors[field_name] = ["Enter a finite amount."]
        return None
    if not has_valid_precision(amount, currency):
        errors[field_name] = [f"{currency} amounts have at most {minor_units(currency)} decimals."]
        return None
    if amount.adjusted() >= 12:
        errors[field_name] = ["This amount is too large."]
        return None
    return amount
