"""Writes of the people's side, one module per responsibility.

* ``cases``: hotline cases (open, note, assign, verify the caller, resolve);
* ``unlocks``: unlock requests, asked by one person and approved (four eyes) or rejected by another;
* ``reviews``: proof-of-purchase reviews submitted by service centers and decided by the provider;
* ``common``: the tenant scope, required text, the device's latest contract.

Support never writes the money side's rows: an approved release or temporary unlock goes through the
lock API (``payments.locks.services``). Every write is atomic and audited. Rights and tenant scope
are checked here as well as in the views (a service may be called from elsewhere): another tenant's object is
``Http404``, a missing right ``PermissionDenied``, bad input ``ValidationError``.

Import from the submodule (``from support.services.cases import case_open``); this package re-exports
nothing.
"""
