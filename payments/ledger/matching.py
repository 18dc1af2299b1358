"""Which contract a payment is for: the one set of matching rules, used for one payment and for a statement's batch.

The rules, in order, each applied only when it gives exactly one live (not cancelled) contract of the provider:

1. ``reference_exact`` (100): the reference is a contract number;
2. ``reference_normalised`` (90): a contract number written another way inside the reference
   ("Rate bp 7", "contract DLG-000131 thanks"), by ``reference_keys``;
3. ``imei`` (90): an IMEI in the reference is an active contract's phone;
4. ``payer_phone`` (70): the payer's phone is the customer of exactly one active contract
   (payments only: statements carry no payer phone).

``payment_find_match`` applies them to one payment, ``contracts_match_many`` to a statement's lines in three
queries; the staff's suggestions for an unmatched payment (``payments.ledger.selectors``) use the same keys,
plus ``reference_prefix_key`` for a reference that only starts like a number.
"""

from __future__ import annotations

import re
from collections import defaultdict

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from payments.contracts.services import parse_phone
from payments.models import Contract, ContractStatus, Payment, contract_number_key, reference_number_keys
from portal.models import Organisation

#: An IMEI written in a payer's reference.
IMEI_IN_TEXT = re.compile(r"\b\d{15}\b")

#: The rules' names and confidences (0–100), as a match reports them.
EXACT = ("reference_exact", 100)
NORMALISED = ("reference_normalised", 90)
IMEI = ("imei", 90)
PAYER_PHONE = ("payer_phone", 70)


def reference_keys(reference: str) -> set[str]:
    """Every contract-number key a payer's reference may mean: its words and numbers, and the whole text."""
    if not reference:
        return set()
    whole = contract_number_key(reference)
    return reference_number_keys(reference) | ({whole} if len(whole) >= 3 else set())


def reference_prefix_key(reference: str) -> str:
    """The whole reference's key when it may be the start of a contract number (suggestions only), else ``""``."""
    whole = contract_number_key(reference or "")
    return whole if len(whole) >= 4 and any(ch.isdigit() for ch in whole) else ""


def _live(provider_id: int) -> QuerySet[Contract]:
    return Contract.objects.filter(provider_id=provider_id).exclude(status=ContractStatus.CANCELLED)


def payment_find_match(payment: Payment) -> tuple[Contract, str, int] | None:
    """The contract a payment is for, by the first rule that gives exactly one answer.

    Reference = contract number (exact, then normalised), an IMEI in the reference, or the
    payer's phone = the customer of exactly one live contract. Returns (contract, rule,
    confidence 0–100), or None when nothing or more than one contract fits.
    """
    live = _live(payment.provider_id)
    reference = payment.reference.strip()
    if reference:
        exact = list(live.filter(number=reference)[:2])
        if len(exact) == 1:
            return exact[0], *EXACT
        keys = reference_keys(reference)
        if keys:
            # One indexed query for every way the payer may have written the number inside
            # the reference ("Rate bp 7", "contract DLG-000131 thanks").
            keyed = list(live.filter(number_key__in=keys).values_list("pk", flat=True).distinct()[:2])
            if len(keyed) == 1:
                return live.get(pk=keyed[0]), *NORMALISED
        for imei in IMEI_IN_TEXT.findall(reference):
            by_imei = list(live.filter(status=ContractStatus.ACTIVE, device__imei=imei)[:2])
            if len(by_imei) == 1:
                return by_imei[0], *IMEI
    if payment.payer_phone:
        try:
            phone = parse_phone(payment.payer_phone, region=payment.provider.country)
        except ValidationError:
            return None
        by_phone = list(live.filter(status=ContractStatus.ACTIVE, customer__phone=phone)[:2])
        if len(by_phone) == 1:
            return by_phone[0], *PAYER_PHONE
    return None


def contracts_match_many(*, provider: Organisation, references: list[str]) -> list[tuple[int, str, int] | None]:
    """``payment_find_match`` for many references at once: ``(contract id, rule, confidence)`` or None each.

    Three queries whatever the number of references. Statements carry no payer phone,
    so the phone rule does not apply here.
    """
    live = _live(provider.pk)
    refs = [(reference or "").strip() for reference in references]
    keys_of: list[set[str]] = []
    known: dict[str, set[str]] = {}
    for ref in refs:
        if ref not in known:  # standing orders repeat the same text month after month
            known[ref] = reference_keys(ref)
        keys_of.append(known[ref])
    exact = dict(live.filter(number__in={ref for ref in refs if ref}).values_list("number", "pk"))
    by_key: dict[str, set[int]] = defaultdict(set)
    all_keys: set[str] = set().union(*keys_of) if keys_of else set()
    if all_keys:
        for key, pk in live.filter(number_key__in=all_keys).values_list("number_key", "pk"):
            by_key[key].add(pk)
    imeis_of = [IMEI_IN_TEXT.findall(ref) for ref in refs]
    by_imei: dict[str, set[int]] = defaultdict(set)
    all_imeis = {imei for imeis in imeis_of for imei in imeis}
    if all_imeis:
        active = live.filter(status=ContractStatus.ACTIVE, device__imei__in=all_imeis)
        for imei, pk in active.values_list("device__imei", "pk"):
            by_imei[imei].add(pk)
    found: list[tuple[int, str, int] | None] = []
    for ref, keys, imeis in zip(refs, keys_of, imeis_of, strict=True):
        if not ref:
            found.append(None)
        elif ref in exact:  # contract numbers are unique per provider
            found.append((exact[ref], *EXACT))
        elif len(ids := set().union(*(by_key[key] for key in keys))) == 1:
            found.append((next(iter(ids)), *NORMALISED))
        else:
            found.append(next(((next(iter(by_imei[i])), *IMEI) for i in imeis if len(by_imei[i]) == 1), None))
    return found
