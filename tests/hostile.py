"""Hostile input for every POST endpoint of both APIs and every portal form: nothing may answer 5xx.

The targets are found, not listed: the API operations from the two OpenAPI documents
(``/api/schema/`` and ``/api/device/v1/schema/``), the portal pages by walking the URL
configuration (an id in a route is filled with an object of the right kind, see
``OBJECT_FOR_PREFIX`` in tests/test_tenancy_pages.py). A new endpoint or form is covered the
day it is added. Each page is posted as the first persona that may open it, with a valid
CSRF token, first with its own form as the page renders it (fields and their values), then
with a small corpus:

* nesting 50,000 deep (arrays, objects), an over-long body (past ``DATA_UPLOAD_MAX_MEMORY_SIZE``);
* NUL bytes, a lone UTF-16 surrogate, invalid UTF-8, 100,000-character strings;
* numbers too big for anything (1e999, 5,000 digits), negative and zero, wrong types
  (lists, objects, booleans, null where text is expected), a field sent twice;
* empty bodies, and bodies in the wrong content type (JSON as a form and the reverse,
  text/plain, XML, multipart without a boundary or with a broken one, a junk file upload).

Two ways to run it:

* ``tests/test_hostile_input.py`` in-process with Django's test client (exceptions surface
  with their traceback);
* ``.ci/run`` against the live gunicorn: ``python -m tests.hostile --base-url http://127.0.0.1:8123
  --provider dialog`` on the server's database (it creates its personas, objects, an API
  key and an enrolled phone there, so use a throw-away database); exits 1 on any 5xx.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

# --- the corpus ----------------------------------------------------------------------------------

NESTED_ARRAYS = b"[" * 50_000 + b"]" * 50_000
NESTED_OBJECTS = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
LONG_TEXT = "x" * 100_000
BOUNDARY = "hostileboundary7MA4YWxkTrZu0gW"


class Raw(str):
    """A JSON value written as is (1e999, a 5,000-digit number, a lone surrogate escape)."""


# Values put in one field at a time, the other fields keeping plausible values.
FIELD_VALUES: list[tuple[str, object]] = [
    ("NUL", "a\x00b"),
    ("lone surrogate", Raw('"\\ud800"')),
    ("long text", LONG_TEXT),
    ("1e999", Raw("1e999")),
    ("5000 digits", Raw("9" * 5000)),
    ("huge integer", 10**30),
    ("negative", -1),
    ("zero", 0),
    ("list", ["x", 1]),
    ("object", {"x": {"y": 1}}),
    ("true", True),
    ("null", None),
    ("empty", ""),
]

# The same for a form: text only.
FORM_VALUES: list[tuple[str, str | bytes]] = [
    ("long text", LONG_TEXT),
    ("5000 digits", "9" * 5000),
    ("1e999", "1e999"),
    ("negative", "-1"),
    ("invalid UTF-8", b"\xff\xfe\xfd"),
    ("surrogate as UTF-8", b"\xed\xa0\x80"),
    ("empty", ""),
    ("markup", '"><script>alert(1)</script>{{7*7}}'),
]
FORM_VALUES_ONE_BY_ONE = [("5000 digits", "9" * 5000), ("negative", "-1"), ("long text", "x" * 5000)]


def _json_text(value: object) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    return json.dumps(value)


def json_body(value: object) -> bytes:
    return _json_text(value).encode("utf-8", "surrogatepass")


def form_body(pairs: list[tuple[str, str | bytes]]) -> bytes:
    from urllib.parse import quote_from_bytes

    def enc(v: str | bytes) -> str:
        return quote_from_bytes(v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass"))

    return "&".join(f"{enc(k)}={enc(v)}" for k, v in pairs).encode()


def multipart_body(fields: list[tuple[str, str | bytes]], files: list[tuple[str, str, bytes]]) -> tuple[str, bytes]:
    parts = []
    for name, value in fields:
        data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data + b"\r\n")
    for name, filename, data in files:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return f"multipart/form-data; boundary={BOUNDARY}", b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@dataclass(frozen=True)
class Body:
    name: str
    content_type: str
    data: bytes


def whole_bodies(valid_json: bytes, big: int) -> list[Body]:
    """Bodies that are hostile as a whole, whatever the endpoint expects."""
    return [
        Body("nested arrays", "application/json", NESTED_ARRAYS),
        Body("nested objects", "application/json", NESTED_OBJECTS),
        Body("raw NUL", "application/json", b"\x00\x00"),
        Body("invalid UTF-8", "application/json", b'{"a": "\xff\xfe\xfd"}'),
        Body("UTF-16", "application/json; charset=utf-16", valid_json.decode().encode("utf-16")),
        Body("unknown charset", "application/json; charset=x-nonsense", valid_json),
        Body("NaN", "application/json", b'{"a": NaN, "b": -Infinity}'),
        Body("empty JSON", "application/json", b""),
        Body("not an object", "application/json", b'"just a string"'),
        Body("empty object", "application/json", b"{}"),
        Body("JSON as text/plain", "text/plain", valid_json),
        Body("XML", "application/xml", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'),
        Body("JSON as a form", "application/x-www-form-urlencoded", valid_json),
        Body("form with NUL name", "application/x-www-form-urlencoded", b"a%00b=1&%00=%00"),
        Body("multipart without boundary", "multipart/form-data", b"--x\r\n\r\n"),
        Body("broken multipart", f"multipart/form-data; boundary={BOUNDARY}", f"--{BOUNDARY}\r\nbroken".encode()),
        Body("no content type", "", valid_json),
        Body("over the size limit", "application/json", b'{"a": "' + b"x" * big + b'"}'),
    ]


# --- API targets from the OpenAPI documents ---------------------------------------------------------


@dataclass
class Target:
    path: str
    kind: str  # "json", "multipart" or "form"
    auth: str = ""  # "bearer", "device" or ""
    fields: dict[str, object] = field(default_factory=dict)  # plausible values
    files: list[str] = field(default_factory=list)
    persona: str = ""  # portal forms: who posts
    label: str = ""


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    if "allOf" in schema:
        merged: dict = {"type": "object", "properties": {}}
        for part in schema["allOf"]:
            merged["properties"].update(_resolve(doc, part).get("properties", {}))
        return merged
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return _resolve(doc, schema[key][0])
    return schema


def _plausible(doc: dict, name: str, schema: dict, hints: dict[str, object]) -> object:
    """A value that passes for ``name`` (hints first), so the one hostile field is the only thing wrong."""
    if name in hints:
        return hints[name]
    schema = _resolve(doc, schema)
    if "enum" in schema:
        return next((v for v in schema["enum"] if v not in ("", None)), "")
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    fmt = schema.get("format", "")
    if kind == "object" or "properties" in schema:
        return {k: _plausible(doc, k, v, hints) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [_plausible(doc, name, schema.get("items", {}), hints)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1
    if kind == "boolean":
        return True
    if fmt == "date-time":
        return (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    if fmt == "date":
        return dt.date.today().isoformat()
    if fmt == "email":
        return "someone@example.com"
    if fmt == "uri":
        return "https://example.com/hook"
    if fmt == "decimal" or "\\d" in schema.get("pattern", ""):
        return "10.00"
    return "x"


def api_targets(doc: dict, hints: dict[str, object]) -> list[Target]:
    """Every POST operation of an OpenAPI document (path parameters filled from ``hints``)."""
    targets = []
    for path, item in doc.get("paths", {}).items():
        operation = item.get("post")
        if operation is None:
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda m: str(hints.get(m.group(1), "1")), path)
        schemes = {name for requirement in operation.get("security", []) for name in requirement}
        auth = "device" if "DeviceCredential" in schemes else "bearer" if schemes else ""
        content = operation.get("requestBody", {}).get("content", {})
        kind = "json" if "application/json" in content else "multipart" if "multipart/form-data" in content else "json"
        media = content.get("application/json") or content.get("multipart/form-data") or {}
        schema = _resolve(doc, media.get("schema", {}))
        fields, files = {}, []
        for name, prop in schema.get("properties", {}).items():
            prop = _resolve(doc, prop)
            if prop.get("format") == "binary" or prop.get("contentMediaType"):
                files.append(name)
            elif not prop.get("readOnly"):
                fields[name] = _plausible(doc, name, prop, hints)
        targets.append(Target(concrete, kind, auth, fields, files, label=f"POST {concrete}"))
    return targets


def api_bodies(target: Target, big: int) -> Iterator[Body]:
    valid = json_body(target.fields)
    if target.kind == "multipart":
        text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in target.fields.items()}
        ct, data = multipart_body(list(text.items()), [(f, "ok.csv", b"imei\n") for f in target.files])
        yield Body("as documented", ct, data)
        for name in text:
            for label, value in FORM_VALUES + [("NUL", "a\x00b")]:
                ct, data = multipart_body(
                    list((text | {name: value}).items()), [(f, "ok.csv", b"imei\n") for f in target.files]
                )
                yield Body(f"{name}={label}", ct, data)
        for file_field in target.files:
            for label, filename, data in [
                ("empty file", "empty.csv", b""),
                ("junk file", "../../etc/passwd\x00.csv", os.urandom(2048)),
                ("binary as csv", "x.csv", b"\x00\xff" * 1000),
            ]:
                ct, raw = multipart_body(list(text.items()), [(file_field, filename, data)])
                yield Body(f"{file_field}: {label}", ct, raw)
    else:
        yield Body("as documented", "application/json", valid)
        for name in target.fields:
            for label, value in FIELD_VALUES:
                yield Body(f"{name}={label}", "application/json", json_body(target.fields | {name: value}))
        yield Body("every field NUL", "application/json", json_body(dict.fromkeys(target.fields, "\x00")))
    yield from whole_bodies(valid, big)


# --- portal targets from the URL configuration -----------------------------------------------------


class _Forms(HTMLParser):
    """The POST forms of a page: action, enctype, and each field's name and first value."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._form: dict | None = None
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and (a.get("method") or "get").lower() == "post":
            self._form = {"action": a.get("action") or "", "enctype": a.get("enctype") or "", "fields": {}, "files": []}
            self.forms.append(self._form)
        elif self._form is None or not a.get("name"):
            return
        elif tag == "input":
            kind = (a.get("type") or "text").lower()
            if kind == "file":
                self._form["files"].append(a["name"])
            elif kind in ("checkbox", "radio"):
                if "checked" in a or a["name"] not in self._form["fields"]:
                    self._form["fields"][a["name"]] = a.get("value") or "on"
            elif kind not in ("submit", "button", "image", "reset"):
                self._form["fields"].setdefault(a["name"], a.get("value") or "")
        elif tag == "select":
            self._select = a["name"]
            self._form["fields"].setdefault(a["name"], "")
        elif tag == "option" and self._select:
            value = a.get("value") or ""
            if "selected" in a or not self._form["fields"].get(self._select):
                self._form["fields"][self._select] = value
        elif tag == "textarea":
            self._textarea = a["name"]
            self._form["fields"].setdefault(a["name"], "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._form is not None and self._textarea:
            self._form["fields"][self._textarea] += data


def portal_routes() -> list[str]:
    """Every portal route (no API, admin or static), walked from the URL configuration."""
    from django.urls import get_resolver
    from django.urls.resolvers import URLResolver

    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                yield prefix + str(pattern.pattern)

    return [r for r in dict.fromkeys(walk(get_resolver().url_patterns)) if not r.startswith(("api/", "admin/"))]


# Routes posted to nowhere: signing out ends the persona's session (its only input is the CSRF token).
SKIPPED_ROUTES = {"logout/"}
# Values for route parameters other than an object id.
ROUTE_VALUES = {"<str:language>": "en", "<uidb64>": "MQ", "<token>": "set-password"}


def concrete_route(route: str, objects: dict[str, int]) -> str | None:
    from tests.test_tenancy_pages import OBJECT_FOR_PREFIX

    path = route
    if "<int:pk>" in path:
        kind = next((k for prefix, k in OBJECT_FOR_PREFIX.items() if route.startswith(prefix)), None)
        if kind is None or kind not in objects:
            return None
        path = path.replace("<int:pk>", str(objects[kind]))
    for placeholder, value in ROUTE_VALUES.items():
        path = path.replace(placeholder, value)
    return None if "<" in path else "/" + path


def form_bodies(target: Target) -> Iterator[Body]:
    fields = {k: v for k, v in target.fields.items() if k != "csrfmiddlewaretoken"}
    multipart = target.kind == "multipart"

    def encode(pairs, files=None) -> tuple[str, bytes]:
        if multipart or files:
            return multipart_body(pairs, files if files is not None else [(f, "r.png", b"x") for f in target.files])
        return "application/x-www-form-urlencoded", form_body(pairs)

    yield Body("as the page renders it", *encode(list(fields.items())))
    # Every field hostile at once (each field's own cleaning meets each value) ...
    for label, value in FORM_VALUES:
        yield Body(f"every field {label}", *encode([(name, value) for name in fields]))
    yield Body("every field twice", *encode([*fields.items(), *((name, "other") for name in fields)]))
    # ... and one at a time with the others as rendered, so checks across fields and the
    # services behind them are reached too (the values most likely to slip through).
    for name in fields:
        for label, value in FORM_VALUES_ONE_BY_ONE:
            yield Body(f"{name}={label}", *encode(list((fields | {name: value}).items())))
    if fields:
        yield Body("one field NUL", *encode(list((fields | {next(iter(fields)): "a\x00b"}).items())))
    for file_field in target.files:
        for label, filename, data in [
            ("empty file", "empty.png", b""),
            ("junk file", "../../etc/passwd", os.urandom(4096)),
            ("PDF header only", "r.pdf", b"%PDF-1.7\n"),
            ("NUL in the name", "r\x00.png", b"\x89PNG\r\n\x1a\n"),
        ]:
            yield Body(f"{file_field}: {label}", *encode(list(fields.items()), [(file_field, filename, data)]))
    # Of the whole-body corpus, what a form handler can meet (the JSON-only ones are the APIs').
    for body in whole_bodies(json_body(fields), 0):
        if body.name in FORM_WHOLE_BODIES:
            yield body


FORM_WHOLE_BODIES = {
    "nested arrays",
    "raw NUL",
    "empty JSON",
    "JSON as text/plain",
    "JSON as a form",
    "form with NUL name",
    "multipart without boundary",
    "broken multipart",
    "no content type",
}


# --- running ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    target: str
    body: str
    status: int
    detail: str = ""


class Transport:
    """How requests reach finlock: ``send(persona, method, path, body, content_type, headers) -> (status, text)``."""

    csrf = secrets.token_hex(16)  # 32 characters: a CSRF secret we choose, sent as cookie, field and header

    def send(self, persona: str, method: str, path: str, body: bytes = b"", content_type: str = "", headers=None):
        raise NotImplementedError


class DjangoTransport(Transport):
    """In-process, through the whole middleware stack, CSRF checks on (tests)."""

    def __init__(self, clients: dict[str, object]):
        self.clients = clients
        for client in clients.values():
            client.cookies["csrftoken"] = self.csrf

    def send(self, persona, method, path, body=b"", content_type="", headers=None):
        client = self.clients[persona]
        response = client.generic(
            method, path, data=body, content_type=content_type or None, headers=headers or {}, follow=False
        )
        if response.streaming:  # a file download: read it through, which closes it as a server would
            b"".join(response.streaming_content)
            return response.status_code, ""
        return response.status_code, response.content.decode("utf-8", "replace")


class HttpTransport(Transport):
    """Over HTTP to a live server (CI)."""

    def __init__(self, base_url: str, session_cookies: dict[str, str], session_cookie_name: str):
        import requests

        self.base_url = base_url.rstrip("/")
        self.sessions = {}
        for persona, cookie in session_cookies.items():
            session = requests.Session()
            if cookie:
                session.cookies.set(session_cookie_name, cookie)
            session.cookies.set("csrftoken", self.csrf)
            self.sessions[persona] = session

    def send(self, persona, method, path, body=b"", content_type="", headers=None):
        hdrs = dict(headers or {})
        if content_type:
            hdrs["Content-Type"] = content_type
        response = self.sessions[persona].request(
            method, self.base_url + path, data=body, headers=hdrs, allow_redirects=False, timeout=120
        )
        return response.status_code, response.text


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    unreached: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status >= 500]

    def summary(self) -> str:
        lines = [
            f"{len(self.outcomes)} hostile requests to {len(self.targets)} targets, {len(self.failures)} answered 5xx"
        ]
        lines += [f"  5xx {o.status}: {o.target} with {o.body}: {o.detail[:300]}" for o in self.failures]
        if self.unreached:
            lines.append(
                f"  not reached by any persona (GET answered neither 200 nor 405): {', '.join(self.unreached)}"
            )
        return "\n".join(lines)


def _post(transport: Transport, report: Report, persona: str, target: Target, body: Body, headers: dict):
    hdrs = {**headers, "X-CSRFToken": transport.csrf}
    try:
        status, text = transport.send(persona, "POST", target.path, body.data, body.content_type, hdrs)
    except Exception as exc:  # the in-process client re-raises a view's exception: that is a 500
        import traceback

        status, text = 500, "".join(traceback.format_exception(exc))[-2000:]
    report.outcomes.append(Outcome(target.label or target.path, body.name, status, text if status >= 500 else ""))


def run_api(transport: Transport, report: Report, docs: list[dict], *, hints, bearer, device, big, anonymous):
    for doc in docs:
        for target in api_targets(doc, hints):
            report.targets.append(target.label)
            headers = {}
            if target.auth == "bearer":
                headers["Authorization"] = f"Bearer {bearer}"
            elif target.auth == "device":
                headers["Authorization"] = f"Device {device}"
            for body in api_bodies(target, big):
                _post(transport, report, anonymous, target, body, headers)


def run_portal(transport: Transport, report: Report, *, personas: list[str], objects: dict[str, int]):
    """Each portal route posted as the first persona whose GET is answered 200 (a page) or 405 (POST only).

    A POST-only route gets the fields of the form that posts to it on a page seen before
    (the URL configuration lists a page before its actions); a page its own form's fields.
    """
    seen_forms: dict[str, dict] = {}
    for route in portal_routes():
        if route in SKIPPED_ROUTES:
            continue
        path = concrete_route(route, objects)
        if path is None:
            report.unreached.append(route)
            continue
        for persona in personas:
            status, page = transport.send(persona, "GET", path)
            if status in (200, 405):
                break
        else:
            report.unreached.append(route)
            continue
        parser = _Forms()
        parser.feed(page if status == 200 else "")
        for found in parser.forms:
            seen_forms.setdefault(found["action"].split("?")[0] or path, found)
        form = seen_forms.get(path) or {"fields": {}, "files": [], "enctype": ""}
        kind = "multipart" if "multipart" in form["enctype"] else "form"
        label = f"{persona} POST {path}"
        target = Target(path, kind, fields=form["fields"], files=form["files"], persona=persona, label=label)
        report.targets.append(label)
        for body in form_bodies(target):
            _post(transport, report, persona, target, body, {})


# --- in CI, against the live server -----------------------------------------------------------------

PERSONA_ROLES = ["technician", "agent", "finance", "auditor", "provider_admin", "operator"]


def live_setup(provider_slug: str, base_url: str) -> dict:
    """Personas, one object of each kind, an API key and an enrolled phone in the live server's database."""
    from django.conf import settings
    from django.test import Client

    from devices.services.tokens import enrollment_token_create
    from portal.models import Organisation, OrganisationKind
    from portal.services import api_key_create
    from tests.conftest import signed_in
    from tests.factories import DeviceFactory, OrganisationFactory, UserFactory
    from tests.phone import enrol_over_http

    provider = Organisation.objects.get(slug=provider_slug, kind=OrganisationKind.PROVIDER)
    center = provider.service_centers.first() or OrganisationFactory(kind="service_center", slug="hostile-centre")
    center.served_providers.add(provider)
    platform = Organisation.objects.filter(kind=OrganisationKind.PLATFORM).first() or OrganisationFactory(
        kind="platform", slug="hostile-platform"
    )
    run = secrets.token_hex(3)
    orgs = {"technician": center, "operator": platform}
    users = {
        role: UserFactory(username=f"hostile.{role}.{run}", organisation=orgs.get(role, provider), role=role)
        for role in PERSONA_ROLES
    }
    cookies = {"anonymous": ""}
    for role, user in users.items():
        client = signed_in(Client(), user)
        cookies[role] = client.cookies[settings.SESSION_COOKIE_NAME].value
    objects = one_of_each(provider, admin=users["provider_admin"], agent=users["agent"], technician=users["technician"])
    bearer = api_key_create(provider=provider, name=f"hostile {run}")[1]
    _token, secret = enrollment_token_create(provider=provider, name=f"hostile {run}", actor=None)
    phone = DeviceFactory(provider=provider)
    enrolled = enrol_over_http(base_url, phone.imei, secret, app_version="hostile")
    return {
        "cookies": cookies,
        "objects": objects,
        "bearer": bearer,
        "device": enrolled["credential"],
        "hints": hints_for(provider, phone, secret),
    }


def hints_for(provider, device, enrollment_secret: str) -> dict[str, object]:
    """Plausible values for the API's identifying fields, so a request gets past the first check."""
    from payments.models import Contract

    contract = Contract.objects.filter(provider=provider).order_by("-id").first()
    return {
        "imei": device.imei,
        "enrollment_token": enrollment_secret,
        "currency": provider.currency,
        "reference": contract.number if contract else "X",
        "BillRefNumber": contract.number if contract else "X",
        "TransAmount": "10.00",
        "TransTime": "20260115103000",
        "number": contract.number if contract else "X",
    }


def one_of_each(provider, *, admin, agent, technician) -> dict[str, int]:
    """One object of each kind a portal route takes an id of, made through the services.

    Also the objects of tests/test_tenancy_pages.py; a fresh suffix per call, so a live database can
    be given them again.
    """
    from decimal import Decimal

    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.utils import timezone

    from devices.models import DeviceCommand
    from devices.services.commands import StateChange, device_states_apply
    from payments.ledger.services import payment_ingest
    from payments.ledger.verify import proof_save
    from payments.models import CsvColumnMapping, PaymentChannel
    from payments.statements.imports import statement_import_create
    from portal.services import api_key_create, staff_create
    from portal.uploads import proof_check
    from portal.webhooks import webhook_create, webhook_event_emit
    from support.services.cases import case_open
    from support.services.reviews import proof_review_submit
    from support.services.unlocks import unlock_request_create
    from tests.factories import make_contract
    from tests.test_browser_stories import png_receipt

    run = secrets.token_hex(3)
    contract = make_contract(provider, number=f"HOSTILE-{run}")
    device = contract.device
    payment, _ = payment_ingest(
        provider=provider,
        channel="mobile_money",
        external_id=f"HOSTILE-{run}",
        amount=Decimal("100.00"),
        currency=provider.currency,
        received_at=timezone.now() - dt.timedelta(hours=1),
        reference="nothing",
    )
    proof = proof_save(payment=payment, checked=proof_check(SimpleUploadedFile("r.png", png_receipt())), actor=agent)
    statement = statement_import_create(provider=provider, filename="s.sta", raw=b":20:X\n", actor=admin)
    mapping = CsvColumnMapping.objects.create(provider=provider, name=f"Bank {run}", mapping={})
    channel = PaymentChannel.objects.create(provider=provider, kind="bank_transfer", name=f"Bank {run}", account="007")
    key, _secret = api_key_create(provider=provider, name=f"erp {run}", actor=admin)
    staff = staff_create(organisation=provider, username=f"hostile.staff.{run}", role="agent", actor=admin)
    staff = staff[0] if isinstance(staff, tuple) else staff
    hook = webhook_create(
        provider=provider, url="https://erp.example.com/hook", events=["payment.matched"], actor=admin
    )
    hook = hook[0] if isinstance(hook, tuple) else hook
    (event,) = webhook_event_emit(provider=provider, event="payment.matched", payload={"x": 1})
    (command,) = device_states_apply(changes=[StateChange(device_id=device.pk, state="locked", reason="Overdue")])
    DeviceCommand.objects.filter(pk=command.pk).update(dead_at=timezone.now())
    case = case_open(provider=provider, category="dispute", opened_by=agent, summary="Wrong amount", device=device)
    review = proof_review_submit(
        device=device, submitted_by=technician, receipts=[proof_check(SimpleUploadedFile("p.png", png_receipt()))]
    )
    unlock = unlock_request_create(device=device, kind="temporary", hours=2, requested_by=agent, reason="Hospital")
    return {
        "api_key": key.pk,
        "staff": staff.pk,
        "webhook_event": event.pk,
        "webhook": hook.pk,
        "dead_letter": command.pk,
        "device": device.pk,
        "csv_mapping": mapping.pk,
        "statement": statement.pk,
        "proof": proof.pk,
        "payment": payment.pk,
        "contract": contract.pk,
        "channel": channel.pk,
        "case": case.pk,
        "review_file": review.files.first().pk,
        "review": review.pk,
        "unlock": unlock.pk,
    }


def fetch_docs(send: Callable[[str], str]) -> list[dict]:
    return [json.loads(send(url)) for url in ("/api/schema/?format=json", "/api/device/v1/schema/?format=json")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="the live server, e.g. http://127.0.0.1:8123")
    parser.add_argument("--provider", default="dialog", help="slug of the provider whose personas post (demo: dialog)")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings

    started = time.monotonic()
    setup = live_setup(args.provider, args.base_url)
    transport = HttpTransport(args.base_url, setup["cookies"], settings.SESSION_COOKIE_NAME)
    docs = fetch_docs(lambda url: transport.send("anonymous", "GET", url)[1])
    report = Report()
    run_api(
        transport,
        report,
        docs,
        hints=setup["hints"],
        bearer=setup["bearer"],
        device=setup["device"],
        big=settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1,
        anonymous="anonymous",
    )
    # Portal last: its forms may revoke API keys or deactivate staff of the provider.
    run_portal(transport, report, personas=["anonymous", *PERSONA_ROLES], objects=setup["objects"])
    print(report.summary())
    print(f"hostile input: {time.monotonic() - started:.0f} s")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
