"""The device owner's public self-service page: "is my phone locked, what do I owe, how do I pay?".

Public, no login, reachable from any other phone or computer. The owner proves they hold the
contract with two things they know: the phone's IMEI or the contract number, and the phone
number on the contract. The answer then says, in the owner's language (English, Sinhala or
Swahili): the lock state in plain words, the amount overdue and the total still to pay, the
next due date, every way to pay with the exact account and reference, and whom to call. The
payment and contact details are those of the phone's lock screen (``payments.locks.screen``).

Privacy rules, enforced here and in :mod:`selfservice.selectors`, held by tests/test_self_service.py:

* A wrong combination (unknown IMEI, unknown contract, or a phone number that is not the
  contract's) gets the very same page, status code and database work as any other wrong
  combination: the page never reveals whether an IMEI or a contract exists.
* The customer's name, address, national ID and phone number are never shown; the IMEI only
  masked to its last four digits.
* Tries are limited per client address (:mod:`selfservice.ratelimit`).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone, translation
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods

from selfservice.forms import LookupForm
from selfservice.language import LANGUAGE_CODES, LANGUAGES, browser_language, chosen_language
from selfservice.ratelimit import RATE_LIMIT_WINDOW, over_rate_limit
from selfservice.selectors import contract_candidates, owned_contract, owner_status

TEMPLATE = "selfservice/selfservice.html"

NOT_FOUND = gettext_lazy("We could not find a phone with these details.")
TOO_MANY = gettext_lazy(
    "Too many tries from this connection. For your security, please wait %(minutes)s minutes and try again.",
)


def _page(request: HttpRequest, *, lang: str, chosen: str, status: int = 200, **context: Any) -> HttpResponse:
    with translation.override(lang):
        response = render(
            request,
            TEMPLATE,
            {
                "lang": lang,
                "chosen_lang": chosen,
                "languages": LANGUAGES,
                **context,
            },
            status=status,
        )
    patch_vary_headers(response, ["Accept-Language"])
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


@never_cache
@csrf_protect
@require_http_methods(["GET", "POST"])
def phone_status(request: HttpRequest) -> HttpResponse:
    """GET: the form. POST: the phone's status for the right combination, else "not found"."""
    chosen = chosen_language(request)
    lang = chosen or browser_language(request)
    if request.method == "GET":
        return _page(request, lang=lang, chosen=chosen, form=LookupForm())

    if over_rate_limit(request):
        with translation.override(lang):
            message = TOO_MANY % {"minutes": RATE_LIMIT_WINDOW // 60}
        return _page(request, lang=lang, chosen=chosen, status=429, rate_limited=message)

    with translation.override(lang):
        form = LookupForm(request.POST)
        valid = form.is_valid()
    if not valid:
        return _page(request, lang=lang, chosen=chosen, status=400, form=form)

    contract = owned_contract(contract_candidates(form.cleaned_data["identifier"]), form.cleaned_data["phone"])
    if contract is not None and not chosen and contract.provider.default_language in LANGUAGE_CODES:
        lang = contract.provider.default_language  # the owner's provider is known now
    status = owner_status(contract, lang=lang, now=timezone.now())
    if status is None:
        return _page(request, lang=lang, chosen=chosen, form=LookupForm(), not_found=NOT_FOUND)
    return _page(request, lang=lang, chosen=chosen, status_info=status)
