from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from portal.audit_checkpoints import audit_checkpoint_write


class Command(BaseCommand):
    help = (
        "Append a signed checkpoint of the audit chain head (event id, hash, time) to AUDIT_CHECKPOINT_FILE "
        "and the log, as the periodic job does. `audit_verify --checkpoint <file>` compares the trail with it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--file", metavar="PATH", help="write to this file instead of AUDIT_CHECKPOINT_FILE")
        parser.add_argument(
            "--force", action="store_true", help="write even if the newest checkpoint in the file covers the head"
        )

    def handle(self, *args, file, force, **options):
        path = Path(file or settings.AUDIT_CHECKPOINT_FILE)
        checkpoint = audit_checkpoint_write(path=path, force=force)
        if checkpoint is None:
            self.stdout.write(
                f"No checkpoint written to {path}: the trail is empty, the newest checkpoint already covers the "
                "head (use --force), or the head does not verify (see the log and run audit_verify)."
            )
            return
        self.stdout.write(f"Checkpoint of event #{checkpoint.event_id} appended to {path}:")
        self.stdout.write(checkpoint.line())
