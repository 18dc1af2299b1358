"""Types every app shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # types need only the names; the modules import Django's auth machinery
    from portal.models import User
    from portal.permissions import ApiClient

#: Who does something, as every service's keyword-only ``actor`` takes it: a signed-in person, a
#: provider's system through its API key, or ``None`` for the system itself (a periodic job, a payment
#: channel's callback, a phone).
Actor: TypeAlias = "User | ApiClient | None"

#: Who an audit event names: an ``Actor``, or the label of something that is not a person or a key
#: (``"device:<uid>"`` for a phone, the name of a job).
AuditActor: TypeAlias = "User | ApiClient | str | None"
