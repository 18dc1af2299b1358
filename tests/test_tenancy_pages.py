"""Another provider's objects are 404 on every portal page that takes an object id, GET and POST alike.

The pages are found by walking the URL configuration, so a new page that takes an id is
covered the day it is added (the test fails if no object is known for it). Provider B's
staff, each with the rights the page needs, ask for provider A's objects: every answer is
404 (or 403 when that role may not use the page at all, which reveals nothing either),
never a page, a redirect or a change.
"""

from __future__ import annotations

import pytest
from django.urls import get_resolver
from django.urls.resolvers import URLResolver

from portal.models import AuditEvent
from tests import hostile
from tests.conftest import signed_in
from tests.factories import UserFactory

# URL prefix (as walked from the root URLconf) -> which of provider A's objects its <pk> names.
OBJECT_FOR_PREFIX = {
    "settings/api-keys/": "api_key",
    "settings/staff/": "staff",
    "settings/webhooks/events/": "webhook_event",
    "settings/webhooks/": "webhook",
    "devices/dead-letters/": "dead_letter",
    "devices/": "device",
    "contracts/statements/mappings/": "csv_mapping",
    "contracts/statements/": "statement",
    "contracts/payments/proofs/": "proof",
    "contracts/payments/": "payment",
    "contracts/": "contract",
    "locks/channels/": "channel",
    "console/devices/": "device",
    "support/cases/": "case",
    "support/reviews/files/": "review_file",
    "support/reviews/": "review",
    "support/unlocks/": "unlock",
}


def pages_with_an_id():
    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                yield prefix + str(pattern.pattern)

    return [
        route
        for route in walk(get_resolver().url_patterns)
        if "<int:pk>" in route and not route.startswith(("admin/", "api/"))
    ]


@pytest.fixture
def objects_of_a(provider_a, admin_a, agent_a, technician):
    """One of each kind of object provider A has, made through the services (shared with the hostile corpus)."""
    return hostile.one_of_each(provider_a, admin=admin_a, agent=agent_a, technician=technician)


@pytest.fixture
def staff_of_b(provider_b):
    return [
        UserFactory(username=f"b.{role}", organisation=provider_b, role=role)
        for role in ("provider_admin", "agent", "finance", "auditor")
    ]


def test_every_page_that_takes_an_id_is_404_for_another_providers_staff(
    objects_of_a, staff_of_b, provider_a, admin_a, agent_a, finance_a, client
):
    pages = pages_with_an_id()
    assert len(pages) >= 30, pages  # the walk found the portal's pages
    audit_before = AuditEvent.objects.filter(organisation=provider_a).count()
    not_found = set()
    for route in pages:
        kind = next((k for prefix, k in OBJECT_FOR_PREFIX.items() if route.startswith(prefix)), None)
        assert kind is not None, f"no object of provider A is known for {route}: add it to OBJECT_FOR_PREFIX"
        url = "/" + route.replace("<int:pk>", str(objects_of_a[kind]))
        for user in staff_of_b:
            signed_in(client, user)
            for method in (client.get, client.post):
                status = method(url).status_code
                assert status in (403, 404, 405), f"{user.role} of provider B got {status} for {method.__name__} {url}"
                if status == 404:
                    not_found.add(route)
            client.logout()
    # Every page was refused as "not found" to someone of B who may use that kind of page.
    assert set(pages) - not_found == set(), set(pages) - not_found
    assert AuditEvent.objects.filter(organisation=provider_a).count() == audit_before  # nothing changed

    # The control: provider A's own staff do reach each of those pages (so the 404s above are the
    # tenancy rule, not a wrong URL). GET only: nothing of A is changed by this test.
    for route in pages:
        kind = next(k for prefix, k in OBJECT_FOR_PREFIX.items() if route.startswith(prefix))
        url = "/" + route.replace("<int:pk>", str(objects_of_a[kind]))
        answers = set()
        for user in (admin_a, agent_a, finance_a):
            answers.add(signed_in(client, user).get(url).status_code)
            client.logout()
        assert answers & {200, 405}, f"provider A's own staff cannot reach {url}: {answers}"
