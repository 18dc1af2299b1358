import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from devices.services import enrollment_token_create
from portal.models import Organisation, OrganisationKind


class Command(BaseCommand):
    help = "Create an enrolment token phones present with their IMEI. The secret is printed once, as the last line."

    def add_arguments(self, parser):
        parser.add_argument("provider_slug")
        parser.add_argument("--name", default="cli", help="A label to tell tokens apart (default: cli)")
        parser.add_argument("--days", type=int, default=None, help="Expire after N days (default: never)")

    def handle(self, *args, provider_slug, name, days, **options):
        provider = Organisation.objects.filter(slug=provider_slug, kind=OrganisationKind.PROVIDER).first()
        if provider is None:
            known = ", ".join(
                Organisation.objects.filter(kind=OrganisationKind.PROVIDER).values_list("slug", flat=True)
            )
            raise CommandError(f"No provider with slug {provider_slug!r}. Known providers: {known or 'none'}.")
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1.")
        expires_at = timezone.now() + dt.timedelta(days=days) if days else None
        token, secret = enrollment_token_create(provider=provider, name=name, actor=None, expires_at=expires_at)
        until = f"until {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else "with no expiry"
        self.stdout.write(
            f"Enrolment token {token.name!r} for {provider.name}, {until}; store it now, it is not shown again:"
        )
        self.stdout.write(secret)
