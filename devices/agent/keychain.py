"""The key statements of an enrolment or check-in answer: a chain, oldest first (docs/lock-pipeline.md, "Keys").

A phone applies them in order, so one that missed statements catches up through the chain. One
claiming a seq the phone already holds is skipped as ``stale`` before any check: an older
statement may be signed by a key the phone no longer trusts, and skipping it grants nothing.
"""

from __future__ import annotations

import json
from typing import Any

from devices.agent.phone import Phone, envelope_dict
from devices.protocol import KIND_KEY_STATEMENT, unb64


def chain_of(answer: dict[str, Any]) -> list[Any]:
    """An answer's ``key_statements``, oldest first (nothing if the member is not a list)."""
    chain = answer.get("key_statements")
    return chain if isinstance(chain, list) else []


def held(phone: Phone, envelope: Any) -> bool:
    """Whether an envelope claims (unverified) to be a statement of a seq the phone already holds."""
    try:
        payload = json.loads(unb64(envelope_dict(envelope)["payload"]).decode("utf-8"))
        kind, seq = payload.get("kind"), payload.get("seq")
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return False  # unreadable: the phone's own checks give the verdict
    return kind == KIND_KEY_STATEMENT and type(seq) is int and 0 < seq <= phone.key_statement_seq


def apply_chain(phone: Phone, chain: list[Any]) -> list[str]:
    """Apply each statement in order; the verdicts of those not skipped as held.

    A phone that trusts no key yet takes the first that verifies with a key it names (or with
    a pinned key): the oldest of the chain, then each later one verifies with the set it holds.
    """
    return [phone.receive_key_statement(envelope) for envelope in chain if not held(phone, envelope)]
