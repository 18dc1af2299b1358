"""Protocol version 2: a command is stored as the exact bytes that were signed.

Commands signed under version 1 keep their text (the version 1 canonical form, which is
what their signature covers) and are marked ``version`` 1: they are never served again,
and a phone checking in is issued its state anew under version 2.
"""

import json

import django.utils.timezone
from django.db import migrations, models


def body_from_payload(apps, schema_editor):
    DeviceCommand = apps.get_model("devices", "DeviceCommand")
    batch = []
    for command in DeviceCommand.objects.only("pk", "payload").iterator(chunk_size=2000):
        command.body = json.dumps(command.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        batch.append(command)
        if len(batch) >= 2000:
            DeviceCommand.objects.bulk_update(batch, ["body"])
            batch = []
    if batch:
        DeviceCommand.objects.bulk_update(batch, ["body"])


class Migration(migrations.Migration):
    dependencies = [("devices", "0006_device_identity")]

    operations = [
        migrations.AddField(model_name="devicecommand", name="body", field=models.TextField(default="")),
        migrations.AddField(
            model_name="devicecommand", name="version", field=models.PositiveSmallIntegerField(default=1)
        ),
        migrations.RunPython(body_from_payload, migrations.RunPython.noop),
        migrations.RemoveField(model_name="devicecommand", name="payload"),
        migrations.AlterField(model_name="devicecommand", name="body", field=models.TextField()),
        migrations.AlterField(
            model_name="devicecommand", name="version", field=models.PositiveSmallIntegerField(default=2)
        ),
        migrations.AddField(
            model_name="device", name="lease_renew_at", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="devicecommand", name="lease_until", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="devicecommand", name="lease_renew_at", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="device", name="seq_jumped_at", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.CreateModel(
            name="KeyStatement",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("seq", models.PositiveIntegerField(unique=True)),
                ("body", models.TextField()),
                ("key_id", models.CharField(max_length=40)),
                ("signature", models.CharField(max_length=100)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={"ordering": ["-seq"]},
        ),
    ]
