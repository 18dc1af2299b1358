"""Which contract a payment is for: the one set of matching rules, used for one payment and for a statement's batch."""

from __future__ import annotations

import re
from collections import defaultdict

from django.core.exceptions import ValidationError

from payments.contracts.services import parse_phone
from payments.models import (
    Contract,
    ContractStatus,
    contract_number_key,
    reference_number_keys,
)

_IMEI = re.compile(r"\b\d{15}\b")


def payment_find_match(payment) -> tuple[Contract, str, int] | None:
    """The contract a payment is for, by the first rule that gives exactly one answer.

    Reference = contract number (exact, then normalised), an IMEI in the reference, or the
    payer's phone = the customer of exactly one live contract. Returns (contract, rule,
    confidence 0–100), or None when nothing or more than one contract fits.
    """

    live = Contract.objects.filter(provider_id=payment.provider_id).exclude(status=ContractStatus.CANCELLED)
    reference = payment.reference.strip()
    if reference:
        exact = list(live.filter(number=reference)[:2])
        if len(exact) == 1:
            return exact[0], "reference_exact", 100
        whole = contract_number_key(reference)
        keys = reference_number_keys(reference) | ({whole} if len(whole) >= 3 else set())
        if keys:
            # One indexed query for every way the payer may have written the number inside
            # the reference ("Rate bp 7", "contract DLG-000131 thanks").
            keyed = list(live.filter(number_key__in=keys).values_list("pk", flat=True).distinct()[:2])
            if len(keyed) == 1:
                return live.get(pk=keyed[0]), "reference_normalised", 90
        for imei in re.findall(r"\b\d{15}\b", reference):
            by_imei = list(live.filter(status=ContractStatus.ACTIVE, device__imei=imei)[:2])
            if len(by_imei) == 1:
                return by_imei[0], "imei", 90
    if payment.payer_phone:
        try:
            phone = parse_phone(payment.payer_phone, region=payment.provider.country)
        except ValidationError:
            return None
        by_phone = list(live.filter(status=ContractStatus.ACTIVE, customer__phone=phone)[:2])
        if len(by_phone) == 1:
            return by_phone[0], "payer_phone", 70
    return None


def _reference_keys(reference: str) -> tuple[set[str], str]:
    """Candidate contract-number keys in a payer's free text, and the whole text's key (for prefixes)."""

    whole = contract_number_key(reference or "")
    return reference_number_keys(reference), whole if len(whole) >= 4 and any(ch.isdigit() for ch in whole) else ""


def contracts_match_many(*, provider, references: list[str]) -> list[tuple[int, str, int] | None]:
    """``payment_find_match`` for many references at once: ``(contract id, rule, confidence)`` or None each.

    Three queries whatever the number of references. Statements carry no payer phone,
    so the phone rule does not apply here.
    """
    live = Contract.objects.filter(provider=provider).exclude(status=ContractStatus.CANCELLED)
    refs = [(reference or "").strip() for reference in references]
    keys_of, known = [], {}
    for ref in refs:
        if ref not in known:  # standing orders repeat the same text month after month
            whole = contract_number_key(ref)
            known[ref] = reference_number_keys(ref) | ({whole} if len(whole) >= 3 else set()) if ref else set()
        keys_of.append(known[ref])
    exact = dict(live.filter(number__in={ref for ref in refs if ref}).values_list("number", "pk"))
    by_key: dict[str, set[int]] = defaultdict(set)
    all_keys = set().union(*keys_of) if keys_of else set()
    if all_keys:
        for key, pk in live.filter(number_key__in=all_keys).values_list("number_key", "pk"):
            by_key[key].add(pk)
    imeis_of = [_IMEI.findall(ref) for ref in refs]
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
            found.append((exact[ref], "reference_exact", 100))
        elif len(ids := set().union(*(by_key[key] for key in keys))) == 1:
            found.append((next(iter(ids)), "reference_normalised", 90))
        else:
            found.append(next(((next(iter(by_imei[i])), "imei", 90) for i in imeis if len(by_imei[i]) == 1), None))
    return found
