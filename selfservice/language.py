"""The languages of the self-service page, and which one a visitor gets."""

from __future__ import annotations

from django.http import HttpRequest

# The languages of this page, each named in itself (an owner looks for their own script).
LANGUAGES = (("en", "English"), ("si", "සිංහල"), ("sw", "Kiswahili"))
LANGUAGE_CODES = frozenset(code for code, _name in LANGUAGES)
# Babel locales for dates: "15 March 2026", "2026 මාර්තු 15", "15 Machi 2026".
DATE_LOCALES = {"en": "en_GB", "si": "si", "sw": "sw"}


def chosen_language(request: HttpRequest) -> str:
    """The language the owner picked with a link (``?lang=si``) or kept in the form."""
    lang = (request.POST.get("lang") or request.GET.get("lang") or "").strip().lower()
    return lang if lang in LANGUAGE_CODES else ""


def browser_language(request: HttpRequest) -> str:
    """The most wanted language of Accept-Language that this page speaks, else English."""
    offered = []
    for position, part in enumerate(request.headers.get("Accept-Language", "")[:500].split(",")):
        tag, _sep, params = part.strip().partition(";")
        params = params.strip()
        try:
            quality = float(params[2:]) if params.startswith("q=") else 1.0
        except ValueError:
            quality = 0.0
        code = tag.strip().lower().split("-")[0]
        if quality > 0 and code in LANGUAGE_CODES:
            offered.append((-quality, position, code))
    return min(offered)[2] if offered else "en"
