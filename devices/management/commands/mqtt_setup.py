import getpass
import os

from django.core.management.base import BaseCommand, CommandError

from devices.mqtt_accounts import BrokerError, broker_setup

ADMIN_PASSWORD_VARIABLE = "MQTT_ADMIN_PASSWORD"


class Command(BaseCommand):
    help = (
        "Set Mosquitto's dynamic-security plugin up for finlock, once per broker (running it again is harmless): "
        "refuse by default, the publisher and provisioner roles, and finlock's accounts from MQTT_URL and "
        "MQTT_PROVISION_URL. Signs in as the plugin's administrator (mosquitto_ctrl dynsec init); the "
        f"administrator's password comes from ${ADMIN_PASSWORD_VARIABLE} or is asked for."
    )

    def add_arguments(self, parser):
        parser.add_argument("--admin-user", default="admin", help="the dynamic-security administrator (default admin)")

    def handle(self, *args, admin_user, **options):
        # Never a command-line option: it would show in the process list and the shell history.
        password = os.environ.get(ADMIN_PASSWORD_VARIABLE)
        if not password:
            try:
                password = getpass.getpass(f"Password of the broker administrator {admin_user!r}: ")
            except (EOFError, KeyboardInterrupt):
                password = ""
        if not password:
            raise CommandError(f"No administrator password (set {ADMIN_PASSWORD_VARIABLE} or type it when asked).")
        try:
            done = broker_setup(admin_username=admin_user, admin_password=password)
        except BrokerError as exc:
            raise CommandError(f"The broker was not set up: {exc}") from None
        for line in done:
            self.stdout.write(f"  {line}")
        self.stdout.write("The broker is set up for finlock: phones get their own accounts when they enrol.")
