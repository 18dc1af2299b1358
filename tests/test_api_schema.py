"""An integrator builds a client from the published OpenAPI schema and reads the docs.

Stories:
* ``/api/schema/`` is a valid OpenAPI 3 document, public (the key is needed for
  the API, not to learn how to call it), in YAML by default and JSON on request;
* it documents the bearer key scheme and requires it on every operation;
* every endpoint and method of the provider API is in it, with its error answers in the
  API's one error shape, and the bulk upload's 201/422 report;
* what the API actually answers matches the schema (a never-acknowledged
  device's blank reported state included);
* it is OpenAPI 3.1 and its ``webhooks`` describe every event finlock POSTs to a provider's
  systems, with the Standard Webhooks signing headers (tests/test_provider_webhooks.py holds
  the bodies finlock sends to these descriptions);
* the signed payloads are described once (``devices.api.payloads``): a real command and a real
  key statement hold exactly the members of the published ``Command`` and ``KeyStatement``,
  with their types, in the device document and (the command, for ``gateway.command``) in the
  provider document; the envelopes say their payload is base64 of one of them;
* nothing in either document makes a generated client declare one enum several times (a
  nullable choice is ``oneOf: [enum, null]``); tests/test_generated_client.py builds and uses
  the clients;
* ``/api/docs/`` renders the interactive docs from our own static files.
"""

from __future__ import annotations

import datetime as dt

import jsonschema
import pytest
import yaml
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from devices.keys import key_statements
from devices.protocol import payload_of
from devices.services.commands import StateChange, device_states_apply
from tests.factories import DeviceFactory, make_contract

EXPECTED_OPERATIONS = {
    ("/api/v1/devices/", "get"),
    ("/api/v1/devices/", "post"),
    ("/api/v1/devices/{imei}/", "get"),
    ("/api/v1/devices/bulk/", "post"),
    ("/api/v1/contracts/", "get"),
    ("/api/v1/contracts/", "post"),
    ("/api/v1/contracts/{number}/", "get"),
    ("/api/v1/payments/", "get"),
    ("/api/v1/payments/", "post"),
    ("/api/v1/payments/{id}/", "get"),
    ("/api/v1/c2b/validation/", "post"),
    ("/api/v1/c2b/confirmation/", "post"),
    ("/api/v1/statements/", "get"),
    ("/api/v1/statements/", "post"),
    ("/api/v1/statements/{id}/", "get"),
}
# Accepted for a background job rather than created at once.
ACCEPTED = {("/api/v1/statements/", "post")}
# Daraja's callbacks: Daraja cannot send headers, so the key may also come as ?key=, and
# Daraja expects 200 answers in its own format, never 201.
DARAJA_CALLBACKS = {"/api/v1/c2b/validation/", "/api/v1/c2b/confirmation/"}


@pytest.fixture
def schema(db) -> dict:
    response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def operations(schema: dict):
    """The provider API's operations (the phones' device API under /api/device/ has its own scheme)."""
    for path, item in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield path, method, operation


def test_the_schema_is_public_and_valid_openapi_3(db):
    response = APIClient().get("/api/schema/")  # no key needed
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")  # YAML
    document = yaml.safe_load(response.content)
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "finlock API"
    validate_schema(document)  # raises on any violation of the OpenAPI 3 meta-schema


def test_the_schema_documents_the_bearer_key_and_requires_it_everywhere(schema):
    scheme = schema["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "create_api_key" in scheme["description"]
    assert "Authorization: Bearer" in schema["info"]["description"]
    for path, method, operation in operations(schema):
        if path in DARAJA_CALLBACKS:  # either the Bearer header or the key in the callback URL
            assert operation.get("security") == [{"ApiKey": []}, {"DarajaCallbackKey": []}], (path, method)
            continue
        assert operation.get("security") == [{"ApiKey": []}], (path, method)
    query_key = schema["components"]["securitySchemes"]["DarajaCallbackKey"]
    assert (query_key["type"], query_key["in"], query_key["name"]) == ("apiKey", "query", "key")


def test_every_endpoint_is_documented_with_its_success_and_error_answers(schema):
    found = {(path, method) for path, method, _op in operations(schema)}
    assert found == EXPECTED_OPERATIONS
    error_ref = "#/components/schemas/Error"
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        success = "200" if path in DARAJA_CALLBACKS else {"get": "200", "post": "201"}[method]
        success = "202" if (path, method) in ACCEPTED else success
        assert success in responses, (path, method)
        for code in ("401", "429"):
            assert responses[code]["content"]["application/json"]["schema"]["$ref"] == error_ref, (path, method, code)
        if method == "post":
            assert responses["400"]["content"]["application/json"]["schema"]["$ref"] == error_ref
        if path.endswith("}/"):  # one object by its key: 404 when it is not this provider's
            assert "404" in responses, path
    bulk = schema["paths"]["/api/v1/devices/bulk/"]["post"]
    assert bulk["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/BulkReport")
    assert "multipart/form-data" in bulk["requestBody"]["content"]


def test_the_list_filters_and_cursor_are_documented(schema):
    params = {p["name"] for p in schema["paths"]["/api/v1/devices/"]["get"]["parameters"]}
    assert {"cursor", "page_size", "desired_state", "reported_state", "maker"} <= params
    params = {p["name"] for p in schema["paths"]["/api/v1/contracts/"]["get"]["parameters"]}
    assert {"cursor", "page_size", "status", "device_imei"} <= params


def test_the_webhooks_are_described_with_their_signing_headers(schema, db):
    from portal.models import WebhookEventName

    assert schema["openapi"] == "3.1.0"
    assert set(schema["webhooks"]) == {*WebhookEventName.values, "gateway.command"}
    for name, item in schema["webhooks"].items():
        operation = item["post"]
        required = {p["name"] for p in operation["parameters"] if p["in"] == "header" and p["required"]}
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= required, name
        assert "standardwebhooks" in operation["description"], name
        body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body.rsplit("/", 1)[1] in schema["components"]["schemas"], name
        assert "200" in operation["responses"], name
    for name in WebhookEventName.values:
        event = schema["components"]["schemas"][
            schema["webhooks"][name]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit(
                "/", 1
            )[1]
        ]
        assert event["properties"]["event"]["const"] == name
        assert set(event["required"]) == {"id", "event", "created_at", "data"}
    # The phones' document has none: webhooks go to a provider's systems.
    assert "webhooks" not in APIClient().get("/api/device/v1/schema/?format=json").json()


def response_validator(schema: dict, component: str):
    """A JSON-schema validator for one response component (an OpenAPI 3.0 ``nullable`` would be honoured;
    3.1 schemas are JSON Schema 2020-12 already)."""

    def to_json_schema(node):
        if isinstance(node, dict):
            node = {k: to_json_schema(v) for k, v in node.items()}
            if node.pop("nullable", False):
                node = {"anyOf": [node, {"type": "null"}]}
            return node
        if isinstance(node, list):
            return [to_json_schema(v) for v in node]
        if isinstance(node, str) and node.startswith("#/components/schemas/"):
            return "#/$defs/" + node.rsplit("/", 1)[1]
        return node

    defs = to_json_schema(schema["components"]["schemas"])
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/$defs/{component}", "$defs": defs}, format_checker=jsonschema.FormatChecker()
    )


def test_real_answers_match_the_schema(schema, api_a, provider_a):
    contract = make_contract(provider_a, number="DLG-1")  # its device never checked in: reported_state ""
    DeviceFactory(provider=provider_a, reported_state="locked")
    checks = [
        ("/api/v1/devices/", "PaginatedDeviceList"),
        (f"/api/v1/devices/{contract.device.imei}/", "Device"),
        ("/api/v1/contracts/", "PaginatedContractListList"),
        ("/api/v1/contracts/DLG-1/", "ContractDetail"),
        ("/api/v1/contracts/NOPE/", "Error"),
    ]
    for url, component in checks:
        body = api_a.get(url).json()
        errors = [e.message for e in response_validator(schema, component).iter_errors(body)]
        assert errors == [], (url, errors)
    assert APIClient().get("/api/v1/devices/").status_code == 401


def test_the_interactive_docs_render_from_our_own_files_and_point_at_the_schema(db):
    client = APIClient()
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    # Swagger UI from our static files (no CDN: works offline and under the CSP).
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "https://" not in page
    # The page's own script loads the schema from /api/schema/.
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert "/api/schema/" in script.content.decode()


# --- the signed payloads ----------------------------------------------------------------------


def issued_commands(provider) -> list[dict]:
    """Real commands as ``devices.services.commands`` signs them, between them every member null and not."""
    now = dt.datetime.now(dt.UTC)
    device = DeviceFactory(provider=provider, imei2="356938035643809")
    changes = [
        StateChange(
            device_id=device.pk,
            state="unlocked",
            reason="Paid",
            screen={"title": "Dialog Finance", "amount_due": "8333.33", "payment_channels": []},
            allowed_numbers=["+94777575727"],
            paid_until=now + dt.timedelta(days=20),
            offline_lock_days=7,
            lease_warning_days=3,
            time_zone="Asia/Colombo",
            lock_window={"start_hour": 9, "end_hour": 17, "weekdays": [0, 1, 2, 3, 4]},
        ),
        StateChange(device_id=device.pk, state="temp_unlocked", reason="Grace", expires_at=now + dt.timedelta(hours=4)),
        StateChange(device_id=device.pk, state="locked", reason="Overdue", lease_expiry_state="reminder"),
    ]
    return [command.envelope for command in device_states_apply(changes=changes)]


def nullable(member: dict) -> bool:
    types = member.get("type")
    return (isinstance(types, list) and "null" in types) or {"type": "null"} in member.get("oneOf", [])


def test_real_commands_hold_exactly_the_members_and_types_the_schemas_publish(schema, provider_a):
    device_document = APIClient().get("/api/device/v1/schema/?format=json").json()
    envelopes = issued_commands(provider_a)
    for document in (device_document, schema):
        command = document["components"]["schemas"]["Command"]
        assert set(command["required"]) == set(command["properties"])  # every member always present
        envelope = document["components"]["schemas"]["CommandEnvelope"]["properties"]["payload"]
        assert (envelope["contentEncoding"], envelope["contentMediaType"]) == ("base64", "application/json")
        assert envelope["contentSchema"] == {"$ref": "#/components/schemas/Command"}
        seen_null, seen_value = set(), set()
        for sent in envelopes:
            assert [e.message for e in response_validator(document, "CommandEnvelope").iter_errors(sent)] == []
            payload = payload_of(sent)
            assert set(payload) == set(command["properties"])
            assert [e.message for e in response_validator(document, "Command").iter_errors(payload)] == []
            seen_null |= {name for name, value in payload.items() if value is None}
            seen_value |= {name for name, value in payload.items() if value is not None}
        # The cases above put every nullable member both ways, so both types were checked.
        may_be_null = {name for name, member in command["properties"].items() if nullable(member)}
        assert may_be_null == seen_null
        assert may_be_null <= seen_value
    gateway = schema["webhooks"]["gateway.command"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert gateway == {"$ref": "#/components/schemas/CommandEnvelope"}


def test_a_real_key_statement_holds_exactly_the_members_and_types_the_device_schema_publishes(db):
    document = APIClient().get("/api/device/v1/schema/?format=json").json()
    statement = document["components"]["schemas"]["KeyStatement"]
    envelope = key_statements()[-1]
    assert [e.message for e in response_validator(document, "KeyStatementEnvelope").iter_errors(envelope)] == []
    payload = payload_of(envelope)
    assert set(payload) == set(statement["properties"]) == set(statement["required"])
    assert [e.message for e in response_validator(document, "KeyStatement").iter_errors(payload)] == []
    payload_schema = document["components"]["schemas"]["KeyStatementEnvelope"]["properties"]["payload"]
    assert payload_schema["contentSchema"] == {"$ref": "#/components/schemas/KeyStatement"}
    for answer in ("EnrollAnswer", "CheckinAnswer"):
        members = document["components"]["schemas"][answer]["properties"]
        # A member with its own description is {"allOf": [{"$ref": ...}], "description": ...}.
        assert members["envelope"]["allOf"] == [{"$ref": "#/components/schemas/CommandEnvelope"}], answer
        assert members["key_statements"]["items"] == {"$ref": "#/components/schemas/KeyStatementEnvelope"}, answer
        assert members["key_statements"]["type"] == "array", answer


def test_no_nullable_choice_is_an_enum_holding_null(schema):
    """``type: [string, null]`` with ``null`` among the values makes openapi-python-client declare three enums."""

    def enums_with_null(node, where=""):
        if isinstance(node, dict):
            if None in node.get("enum", []) and node.get("enum") != [None]:
                yield where
            for key, value in node.items():
                yield from enums_with_null(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from enums_with_null(value, f"{where}[{index}]")

    device_document = APIClient().get("/api/device/v1/schema/?format=json").json()
    assert list(enums_with_null(schema)) == []
    assert list(enums_with_null(device_document)) == []
