from django.db import migrations, models

FIELD = dict(
    blank=True,
    db_default=None,
    help_text="CPU seconds each of its processes may use, e.g. 3600; empty: no limit.",
    null=True,
)


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0028_job_pending_by_queue_team"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="cpu_time_limit_seconds",
            field=models.PositiveIntegerField(**FIELD),
        ),
        migrations.AddField(
            model_name="jobdefinition",
            name="cpu_time_limit_seconds",
            field=models.PositiveIntegerField(**FIELD),
        ),
    ]
