"""``manage.py demo``: migrate, load the demo data, create one login per role, print them, serve.

Development only: it prints fixed passwords, TOTP secrets and API keys.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from demo import generator
from demo.management.commands.totp_code import DEMO_DEVICE_NAME
from portal.audit import audit_record, snapshot
from portal.models import ApiKey, Organisation, User
from portal.periodic import PeriodicRunner
from portal.services import api_key_create


@dataclass(frozen=True)
class DemoUser:
    """One demo login: who, where, which role."""

    username: str
    organisation: str  # slug
    role: str
    first_name: str
    last_name: str

    @property
    def password(self) -> str:
        """The published demo password, e.g. ``demo-agent-2026``."""
        # Fixed and printed: the demo is for trying finlock out on one's own machine.
        return f"demo-{self.role}-2026"


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("dialog.admin", "dialog", "provider_admin", "Nadeesha", "Perera"),
    DemoUser("dialog.agent", "dialog", "agent", "Kasun", "Fernando"),
    DemoUser("dialog.finance", "dialog", "finance", "Tharshini", "Rajendran"),
    DemoUser("dialog.auditor", "dialog", "auditor", "Ruwan", "Gunasekara"),
    DemoUser("jamii.admin", "jamii", "provider_admin", "Wanjiru", "Kamau"),
    DemoUser("jamii.agent", "jamii", "agent", "Brian", "Otieno"),
    DemoUser("jamii.finance", "jamii", "finance", "Achieng", "Odhiambo"),
    DemoUser("fixit.tech", "fixit", "technician", "Suresh", "Kandiah"),
    DemoUser("platform.operator", "platform", "operator", "Amara", "Silva"),
)

API_KEYS_FILE = "demo-api-keys.json"


def demo_api_keys_path() -> Path:
    """Where the demo keeps its API keys in clear, next to the development secret key (``var/``)."""
    return Path(settings.VAR_DIR) / API_KEYS_FILE


class Command(BaseCommand):
    help = (
        "Migrate, load the demo data (two providers, a service center, the platform, devices and contracts in "
        "every situation), create one login per role, print them, and serve the portal. Development only."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-serve", action="store_true", help="Load and print the logins, do not serve.")
        parser.add_argument(
            "--devices",
            type=int,
            default=generator.DEFAULT_DEVICES,
            help=f"Devices (each with a customer and a contract) across both providers "
            f"(default {generator.DEFAULT_DEVICES}, at least {generator.MIN_DEVICES}).",
        )
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Address to serve on (default 127.0.0.1:8000).")
        parser.add_argument("--seed", type=int, default=generator.DEFAULT_SEED, help="Seed of the data generator.")
        parser.add_argument(
            "--i-know-this-is-not-production",
            action="store_true",
            dest="not_production",
            help="Run even though DEBUG is off (the demo creates users with published passwords).",
        )

    def handle(self, *args, no_serve, devices, addr, seed, not_production, **options):
        """Migrate, load, create the logins, print them, then serve unless ``--no-serve``."""
        # The demo creates staff users whose passwords are printed here and in
        # the README: refuse anywhere that might be reachable by others.
        if not settings.DEBUG and not not_production:
            raise CommandError(
                "DEBUG is off, so this looks like production. The demo creates users with published passwords; "
                "pass --i-know-this-is-not-production if this really is a throwaway environment."
            )
        if devices < generator.MIN_DEVICES:
            raise CommandError(f"--devices must be at least {generator.MIN_DEVICES} to show every situation.")

        self._heading("finlock demo")
        self.stdout.write("Migrating the database ...")
        call_command("migrate", interactive=False, verbosity=0)

        try:
            loads = generator.load_demo(devices=devices, seed=seed)
        except (ValueError, ValidationError) as exc:
            raise CommandError(f"Could not load the demo data: {exc}") from exc
        self._report_loads(loads)

        orgs = {o.slug: o for o in Organisation.objects.filter(slug__in={u.organisation for u in DEMO_USERS})}
        users = self._ensure_users(orgs)
        generator.load_people_side(users=users)
        secrets = self._ensure_totp_devices(users)
        keys = self._ensure_api_keys(orgs)
        self._print_logins(users, orgs, secrets, keys, addr)

        if no_serve:
            return
        self._heading(f"Serving http://{addr}/ (Ctrl-C to stop)")
        if settings.CELERY_TASK_ALWAYS_EAGER:
            # No broker, so no beat: the sweep, flushes, checkpoints and pruning run in this process.
            PeriodicRunner(settings.CELERY_BEAT_SCHEDULE).start()
            self.stdout.write(
                f"  periodic jobs run in-process ({len(settings.CELERY_BEAT_SCHEDULE)}, as Celery beat would)"
            )
        call_command("runserver", addr, use_reloader=False)

    # --- steps -----------------------------------------------------------------

    def _report_loads(self, loads) -> None:
        self._heading("Demo data")
        for load in loads:
            org = load.provider
            where = f"{org.country}, {org.currency}, {org.time_zone}, local today {org.today().isoformat()}"
            if load.skipped:
                self.stdout.write(f"  {org.name} ({where}): already loaded, {load.existing} contracts; nothing added.")
                continue
            self.stdout.write(f"  {org.name} ({where}): {load.created} devices, customers and contracts")
            for situation in generator.Situation:
                label = situation.value.replace("_", " ")
                self.stdout.write(f"      {label:<20} {load.situations.get(situation, 0):>5}")

    @transaction.atomic
    def _ensure_users(self, orgs: dict[str, Organisation]) -> dict[str, User]:
        """Get or create each demo user; make sure the printed password and role hold."""
        users = {}
        # Hashing is deliberately slow; users sharing a demo password share one hash.
        hashes: dict[str, str] = {}
        checked: dict[tuple[str, str], bool] = {}
        for spec in DEMO_USERS:
            org = orgs[spec.organisation]
            user = User.objects.filter(username=spec.username).first()
            created = user is None
            if created:
                user = User(username=spec.username)
            user.organisation = org
            user.role = spec.role
            user.first_name, user.last_name = spec.first_name, spec.last_name
            user.email = user.email or f"{spec.username}@{org.slug}.example"
            user.is_active = True
            # The operator runs the platform: the Django admin is theirs too.
            user.is_staff = user.is_superuser = spec.role == "operator"
            # Re-runs keep what was printed true, even if someone changed the password meanwhile.
            key = (user.password, spec.password)
            if not created and key not in checked:
                checked[key] = user.check_password(spec.password)
            if created or not checked[key]:
                if spec.password not in hashes:
                    hashes[spec.password] = make_password(spec.password)
                user.password = hashes[spec.password]
                checked[(user.password, spec.password)] = True
            user.full_clean(exclude=["password"])
            user.save()
            if created:
                audit_record(actor=None, action="user.create", obj=user, after=snapshot(user))
            users[spec.username] = user
        return users

    @transaction.atomic
    def _ensure_totp_devices(self, users: dict[str, User]) -> dict[str, TOTPDevice]:
        """A confirmed ``demo`` authenticator for every user who must use two-factor sign-in."""
        devices = {}
        for username, user in users.items():
            if not user.requires_2fa:
                continue
            device, created = TOTPDevice.objects.get_or_create(
                user=user, name=DEMO_DEVICE_NAME, defaults={"confirmed": True}
            )
            if not device.confirmed:
                device.confirmed = True
                device.save(update_fields=["confirmed"])
            if created:
                audit_record(actor=None, action="2fa.enrol", obj=user, object_repr=f"{username} (demo authenticator)")
            devices[username] = device
        return devices

    def _ensure_api_keys(self, orgs: dict[str, Organisation]) -> dict[str, str]:
        """One API key per provider, reused across runs.

        Only a digest is stored in the database, so the full key is kept in
        ``var/demo-api-keys.json`` (like the development secret key); a key is
        created only when the file has none that still works here.
        """
        path = demo_api_keys_path()
        try:
            saved = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            saved = {}
        keys = {}
        for spec in generator.PROVIDERS:
            provider = orgs[spec.slug]
            full = saved.get(spec.slug, "")
            works = ApiKey.objects.filter(provider=provider, digest=ApiKey.digest_of(full), revoked_at__isnull=True)
            if not (full and works.exists()):
                _key, full = api_key_create(provider=provider, name="demo", actor=None)
            keys[spec.slug] = full
        if keys != saved:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written owner-only: the file holds working credentials.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(keys, handle, indent=2)
        return keys

    # --- output ------------------------------------------------------------------

    def _heading(self, text: str) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(text))

    def _print_logins(self, users, orgs, secrets, keys, addr) -> None:
        self._heading("Demo logins (demo only: fixed passwords, never use them anywhere else)")
        self.stdout.write(f"  Sign in at http://{addr}/login/")
        rows = [("username", "password", "role", "organisation", "second factor")]
        for spec in DEMO_USERS:
            user = users[spec.username]
            second = f"TOTP code: ./dev totp_code {spec.username}" if user.requires_2fa else "none"
            rows.append((spec.username, spec.password, user.get_role_display(), orgs[spec.organisation].name, second))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for n, row in enumerate(rows):
            line = "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write(self.style.HTTP_INFO(line.rstrip()) if n == 0 else line.rstrip())

        self._heading("Two-factor secrets (demo only)")
        self.stdout.write(
            "  Provider admins and the platform operator enter a 6-digit code after the password.\n"
            "  Get it with `./dev totp_code <username>`, or add the secret to an authenticator app.\n"
            "  A code signs in once; for a second sign-in wait for the next code (every 30 s)."
        )
        for username, device in secrets.items():
            secret = base64.b32encode(device.bin_key).decode()
            self.stdout.write(f"  {username:<18} secret {secret}")

        self._heading("API keys (demo only)")
        for spec in generator.PROVIDERS:
            self.stdout.write(f"  {orgs[spec.slug].name:<20} {keys[spec.slug]}")
        any_key = keys[generator.PROVIDERS[0].slug]
        self.stdout.write(
            f'  try: curl -H "Authorization: Bearer {any_key}" http://{addr}/api/v1/devices/\n'
            f"  (kept in {demo_api_keys_path()} so a re-run prints the same keys)"
        )
