import base64
import os
import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devices.keys import current_signer, public_key_b64, public_keys, statement_problems
from devices.models import KeyStatement


class Command(BaseCommand):
    help = (
        "Show the device signing key in use, every public key phones accept and how the configuration "
        "compares with the published key statement, or --generate a new DEVICE_SIGNING_KEY. To rotate "
        '(docs/lock-pipeline.md, "Keys"): 1. add the new key\'s `<id>:<public key>` to '
        "DEVICE_SIGNING_PUBLIC_KEYS; 2. set DEVICE_SIGNING_KEY to the new key and list the old one's public "
        "half in DEVICE_SIGNING_PUBLIC_KEYS; 3. remove it from there and name it in DEVICE_SIGNING_RETIRED_KEYS."
    )

    def add_arguments(self, parser):
        parser.add_argument("--generate", metavar="KEY_ID", help="Print a fresh DEVICE_SIGNING_KEY with this key id")

    def handle(self, *args, generate, **options):
        if generate:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}", generate):
                raise CommandError("A key id is 1-40 letters, digits, '.', '-' or '_', e.g. k2026a.")
            seed = os.urandom(32)
            public = public_key_b64(Ed25519PrivateKey.from_private_bytes(seed))
            self.stdout.write(f"Public key (for DEVICE_SIGNING_PUBLIC_KEYS to announce it): {generate}:{public}")
            self.stdout.write(f"DEVICE_SIGNING_KEY={generate}:{base64.b64encode(seed).decode()}")
            return
        key_id, _private = current_signer()
        configured = public_keys()
        self.stdout.write(f"Signing with {key_id}. Public keys phones accept:")
        for kid, public in configured.items():
            self.stdout.write(f"{kid}:{public}")
        statements = list(KeyStatement.objects.order_by("seq"))
        if not statements:
            self.stdout.write("No key statement yet: the first answer to a phone writes statement 1.")
            return
        published, seq = [statement.keys for statement in statements], statements[-1].seq
        self.stdout.write(f"Published key statement {seq} lists {', '.join(sorted(published[-1]))}.")
        problems = statement_problems(published, configured, key_id, frozenset(settings.DEVICE_SIGNING_RETIRED_KEYS))
        if problems:
            self.stdout.write(f"This configuration writes no statement: {'; '.join(problems)}.")
        elif published[-1] != configured:
            self.stdout.write(f"This configuration writes statement {seq + 1}: {', '.join(sorted(configured))}.")
