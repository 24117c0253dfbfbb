from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0027_workflow_created"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                models.F("queue"),
                models.F("team"),
                models.OrderBy(models.F("priority"), descending=True),
                models.OrderBy(models.F("deadline"), nulls_last=True),
                models.F("created_at"),
                models.F("id"),
                condition=models.Q(
                    ("status", "pending"),
                    models.Q(
                        ("pending_reason__in", ("waiting_dependencies", "waiting_array_slot")),
                        _negated=True,
                    ),
                ),
                name="job_pending_by_queue_team",
            ),
        ),
        migrations.RemoveIndex(model_name="job", name="job_pending_by_queue"),
    ]
