import base64
import os
import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management.base import BaseCommand, CommandError

from devices.keys import current_signer, public_key_b64, public_keys


class Command(BaseCommand):
    help = (
        "Show the device signing key in use and every public key phones accept, or --generate a new "
        "DEVICE_SIGNING_KEY. To rotate: add the current key's `<id>:<public key>` to "
        "DEVICE_SIGNING_PUBLIC_KEYS, then set DEVICE_SIGNING_KEY to the new one."
    )

    def add_arguments(self, parser):
        parser.add_argument("--generate", metavar="KEY_ID", help="Print a fresh DEVICE_SIGNING_KEY with this key id")

    def handle(self, *args, generate, **options):
        if generate:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}", generate):
                raise CommandError("A key id is 1-40 letters, digits, '.', '-' or '_', e.g. k2026a.")
            seed = os.urandom(32)
            public = public_key_b64(Ed25519PrivateKey.from_private_bytes(seed))
            self.stdout.write(f"Public key (for DEVICE_SIGNING_PUBLIC_KEYS once retired): {generate}:{public}")
            self.stdout.write(f"DEVICE_SIGNING_KEY={generate}:{base64.b64encode(seed).decode()}")
            return
        key_id, _private = current_signer()
        self.stdout.write(f"Signing with {key_id}. Public keys phones accept:")
        for kid, public in public_keys().items():
            self.stdout.write(f"{kid}:{public}")
