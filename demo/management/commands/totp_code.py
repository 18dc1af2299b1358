"""``manage.py totp_code <username>``: the current code of a demo user's authenticator (development only)."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.models import User

DEMO_DEVICE_NAME = "demo"


def current_code(device: TOTPDevice) -> str:
    """The 6-digit code ``device`` accepts right now, computed exactly as django-otp verifies it."""
    token = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift)
    return f"{token:0{device.digits}d}"


def seconds_left(device: TOTPDevice) -> int:
    """Seconds until the current code is replaced by the next one."""
    return device.step - int(time.time() - device.t0) % device.step


def demo_device(username: str) -> TOTPDevice:
    """The confirmed ``demo`` TOTP device of ``username``; ``CommandError`` explains what is missing."""
    user = User.objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"No user {username!r}. Run `./dev demo --no-serve` to create the demo users.")
    device = TOTPDevice.objects.filter(user=user, name=DEMO_DEVICE_NAME, confirmed=True).first()
    if device is None:
        raise CommandError(
            f"{username} has no demo authenticator (only demo users needing two-factor sign-in have one)."
        )
    return device


class Command(BaseCommand):
    help = (
        "Print the current 6-digit code of a demo user's authenticator, for signing in to the demo. "
        "Development only: refused when DEBUG is off."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username, **options):
        # Printing a second factor defeats it; only ever on a development machine.
        if not settings.DEBUG:
            raise CommandError("totp_code is for the demo only and refuses to run with DEBUG off.")
        device = demo_device(username)
        # The code alone on stdout, so scripts can use it; the hint goes to stderr.
        self.stdout.write(current_code(device))
        self.stderr.write(
            f"valid for {seconds_left(device)} more seconds; each code signs in once, then wait for the next."
        )
