from django.core.management.base import BaseCommand, CommandError

from portal.services import audit_verify_chain


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; names the first broken event and exits non-zero if any."

    def handle(self, *args, **options):
        report = audit_verify_chain()
        if not report.ok:
            raise CommandError(
                f"Audit chain broken at event #{report.first_broken_id}: {report.reason}. "
                f"{report.checked} events before it verified."
            )
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {report.checked} events verified."))
