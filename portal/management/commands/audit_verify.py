from django.core.management.base import BaseCommand, CommandError

from portal.audit_checkpoints import CheckpointError, audit_checkpoints_read
from portal.audit_verify import audit_verify_chain


class Command(BaseCommand):
    help = (
        "Verify the audit trail: every event's link and keyed hash, the signed chain head, and with "
        "--checkpoint the checkpoints kept outside the database. Names the first broken event (or the "
        "missing range) and exits non-zero if anything is wrong."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--checkpoint",
            action="append",
            default=[],
            metavar="FILE",
            help="a checkpoint file (AUDIT_CHECKPOINT_FILE) or a log holding 'audit-checkpoint {...}' lines; "
            "the trail must still hash to every checkpoint in it and be at least as long (repeatable)",
        )

    def handle(self, *args, checkpoint, **options):
        checkpoints = []
        for path in checkpoint:
            try:
                found = audit_checkpoints_read(path)
            except OSError as exc:
                raise CommandError(f"Cannot read the checkpoint file {path}: {exc.strerror or exc}") from None
            except CheckpointError as exc:
                raise CommandError(f"Cannot use the checkpoints: {exc}") from None
            if not found:
                raise CommandError(f"{path} holds no audit checkpoint")
            checkpoints.extend(found)
        report = audit_verify_chain(checkpoints=checkpoints)
        if not report.ok:
            where = f" at event #{report.first_broken_id}" if report.first_broken_id is not None else ""
            raise CommandError(
                f"Audit chain broken{where}: {report.reason}. {report.checked} events before it verified."
            )
        keys = ", ".join(report.key_ids) or "none"
        self.stdout.write(
            self.style.SUCCESS(
                f"Audit chain intact: {report.checked} events verified "
                f"({report.unkeyed} unkeyed from before keyed hashing; audit keys: {keys})."
            )
        )
        if report.newest_checkpoint is not None:
            newest = report.newest_checkpoint
            self.stdout.write(
                f"{report.checkpoints_matched} checkpoints matched; the newest covers events up to "
                f"#{newest.event_id} ({newest.at})."
            )
        elif not checkpoint:
            self.stdout.write(
                "No checkpoints compared: pass --checkpoint <file> to detect a rewritten or shortened trail."
            )
