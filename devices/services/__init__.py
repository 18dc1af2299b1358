"""Writes of the device registry, one module per responsibility.

* ``registry``: devices one at a time and from a CSV (bulk upload);
* ``commands``: desired state in, signed commands out (the outbox rows);
* ``credentials``, ``tokens``, ``enrolment``: a phone's secrets, the providers' enrolment
  tokens and enrolment itself;
* ``checkin``: what a phone reports and the answer it gets;
* ``offline``: offline codes and offline-code re-keys (four eyes); ``access``: who may act.

Import from the submodule (``from devices.services.enrolment import device_enroll``); this package
re-exports nothing.
"""
