from django.core.management.base import BaseCommand, CommandError

from portal.models import Organisation, OrganisationKind
from portal.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a provider. The key is printed once, as the last line."

    def add_arguments(self, parser):
        parser.add_argument("provider_slug")
        parser.add_argument("--name", default="cli", help="A label to tell keys apart (default: cli)")

    def handle(self, *args, provider_slug, name, **options):
        provider = Organisation.objects.filter(slug=provider_slug, kind=OrganisationKind.PROVIDER).first()
        if provider is None:
            known = ", ".join(
                Organisation.objects.filter(kind=OrganisationKind.PROVIDER).values_list("slug", flat=True)
            )
            raise CommandError(f"No provider with slug {provider_slug!r}. Known providers: {known or 'none'}.")
        key, full = api_key_create(provider=provider, name=name)
        self.stdout.write(f"API key {key.prefix} for {provider.name}; store it now, it is not shown again:")
        self.stdout.write(full)
