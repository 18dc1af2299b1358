import datetime as dt

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from devices.services.tokens import enrollment_token_create
from portal.models import Organisation, OrganisationKind


class Command(BaseCommand):
    help = (
        "Create an enrolment token phones present with their IMEI for their first enrolment. "
        "The secret is printed once, as the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("provider_slug")
        parser.add_argument("--name", default="cli", help="A label to tell tokens apart (default: cli)")
        parser.add_argument("--days", type=int, default=None, help="Expire after N days (default: never)")
        parser.add_argument("--shop", default="", help="The shop that uses it, recorded with each enrolment")
        parser.add_argument(
            "--max-uses", type=int, default=None, help="Phones it may enrol for the first time (default: no limit)"
        )

    def handle(self, *args, provider_slug, name, days, shop, max_uses, **options):
        provider = Organisation.objects.filter(slug=provider_slug, kind=OrganisationKind.PROVIDER).first()
        if provider is None:
            known = ", ".join(
                Organisation.objects.filter(kind=OrganisationKind.PROVIDER).values_list("slug", flat=True)
            )
            raise CommandError(f"No provider with slug {provider_slug!r}. Known providers: {known or 'none'}.")
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1.")
        if max_uses is not None and max_uses < 1:
            raise CommandError("--max-uses must be at least 1.")
        expires_at = timezone.now() + dt.timedelta(days=days) if days else None
        try:
            token, secret = enrollment_token_create(
                provider=provider, name=name, actor=None, expires_at=expires_at, shop=shop, max_uses=max_uses
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        until = f"until {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else "with no expiry"
        scope = f" for shop {token.shop!r}" if token.shop else ""
        uses = f", at most {token.max_uses} phone(s)" if token.max_uses else ""
        self.stdout.write(
            f"Enrolment token {token.name!r}{scope} for {provider.name}, {until}{uses}; "
            "store it now, it is not shown again:"
        )
        self.stdout.write(secret)
