import django.db.models.deletion
from django.db import migrations, models

# Each allocation takes its job's team.
BACKFILL = """
UPDATE resources_allocation a SET team_id = j.team_id
  FROM jobs_jobexecution e JOIN jobs_job j ON j.id = e.job_id
 WHERE e.id = a.execution_id
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_audit_event"),
        ("resources", "0008_queue_past_share"),
        ("jobs", "0028_job_pending_by_queue_team"),
    ]

    operations = [
        migrations.AddField(
            model_name="allocation",
            name="team",
            field=models.ForeignKey(
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="accounts.team",
            ),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="allocation",
            name="team",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="accounts.team",
            ),
        ),
        migrations.AddIndex(
            model_name="allocation",
            index=models.Index(
                condition=models.Q(("status__in", ("reserved", "active"))),
                fields=["queue", "team"],
                include=("cpu_millis", "memory_mb", "gpu"),
                name="allocation_live_by_queue_team",
            ),
        ),
        migrations.RemoveIndex(model_name="allocation", name="allocation_live_by_queue"),
    ]
