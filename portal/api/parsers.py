"""The one JSON reader of both APIs (provider and device): bounded in size and depth.

Python's ``json`` recurses once per nesting level, so ``'[' * 50000`` raises RecursionError,
which DRF's parser does not catch (a 500); and DRF reads a JSON body whole whatever its
size (``DATA_UPLOAD_MAX_MEMORY_SIZE`` guards only forms and ``request.body``). Here a
body larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is 413, and one that is not UTF-8, not
JSON, uses NaN/Infinity or nests deeper than :data:`MAX_DEPTH` is 400, all before any
view sees it. No finlock request nests deeper than four levels.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal

from django.conf import settings
from rest_framework import exceptions, parsers, renderers, status

MAX_DEPTH = 32


class JSONTooDeep(ValueError):
    pass


class BodyTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def finite_float(text: str) -> float:
    """A JSON number as float; 1e999 (which float() reads as infinity) is refused like Infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


# A \uD800-\uDFFF escape: JSON lets it through, but a lone one is no character (it cannot be
# stored, compared or even written back in an error message).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check(value, limit: int, *, strings: bool) -> None:
    """Raise ValueError if ``value`` nests deeper than ``limit`` or (``strings``) holds a lone surrogate.

    Iterative, so a structure that parsed cannot make this recurse.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()] if strings else item.values()
        elif isinstance(item, list):
            children = item
        elif strings and isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a text holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is no character")
            continue
        else:
            continue
        if depth > limit:
            raise JSONTooDeep(f"nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children if strings or isinstance(child, dict | list))


def loads(text: str | bytes, *, parse_float=finite_float, max_depth: int = MAX_DEPTH):
    """``json.loads`` that refuses NaN/Infinity and nesting deeper than ``max_depth`` with a ValueError."""
    try:
        value = json.loads(text, parse_float=parse_float, parse_constant=_no_constant)
    except RecursionError:
        # The C scanner gave up long before the interpreter's stack did: same answer as below.
        raise JSONTooDeep(f"nested deeper than {max_depth} levels") from None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    _check(value, max_depth, strings=bool(_SURROGATE_ESCAPE.search(text)))
    return value


class JSONParser(parsers.BaseParser):
    """DRF's JSON parser with a size limit (413), a depth limit and a 400 for anything unreadable.

    Not a subclass of DRF's ``JSONParser`` on purpose: for those DRF reads ``request.body``
    first, which raises RequestDataTooBig (logged with a traceback) instead of letting the
    parser answer 413 from the declared length without reading the body.
    """

    media_type = "application/json"
    renderer_class = renderers.JSONRenderer
    parse_float = staticmethod(finite_float)

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            declared = 0
        if limit is not None and declared > limit:
            raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
        raw = stream.read(limit + 1) if limit is not None else stream.read()
        if limit is not None and len(raw) > limit:
            raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise exceptions.ParseError(f"JSON parse error - the body is not valid {encoding}.") from None
        try:
            return loads(text, parse_float=self.parse_float)
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


class DecimalJSONParser(JSONParser):
    """JSON whose numbers become ``Decimal``: an amount sent as a bare number never passes through float."""

    parse_float = staticmethod(Decimal)  # type: ignore[assignment]  # json.loads takes any callable here
