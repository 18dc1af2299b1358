import re

from django.core.management.base import BaseCommand, CommandError

from portal.audit_keys import generate_key_line, signing_key, verification_keys


class Command(BaseCommand):
    help = (
        "Show which audit key ids are in use (never the keys), or --generate a new AUDIT_HMAC_KEY. To rotate: "
        "move the current `<id>:<key>` into AUDIT_HMAC_RETIRED_KEYS and set AUDIT_HMAC_KEY to the new one; "
        "keep retired keys as long as the events they keyed must verify."
    )

    def add_arguments(self, parser):
        parser.add_argument("--generate", metavar="KEY_ID", help="Print a fresh AUDIT_HMAC_KEY with this key id")

    def handle(self, *args, generate, **options):
        if generate:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}", generate):
                raise CommandError("A key id is 1-40 letters, digits, '.', '-' or '_', e.g. audit2026a.")
            self.stdout.write(f"AUDIT_HMAC_KEY={generate_key_line(generate)}")
            return
        current, _key = signing_key()
        retired = sorted(set(verification_keys()) - {current})
        self.stdout.write(f"Keying new audit events with {current}; also verifying: {', '.join(retired) or 'none'}")
