import django.db.models.deletion
from django.db import migrations, models

# Each allocation takes its job's queue.
BACKFILL = """
UPDATE resources_allocation a SET queue_id = j.queue_id
  FROM jobs_jobexecution e JOIN jobs_job j ON j.id = e.job_id
 WHERE e.id = a.execution_id
"""


class Migration(migrations.Migration):
    dependencies = [
        ("resources", "0006_queue_preemption"),
        ("jobs", "0019_gang_reservation"),
    ]

    operations = [
        migrations.AddField(
            model_name="allocation",
            name="queue",
            field=models.ForeignKey(
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="resources.queue",
            ),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="allocation",
            name="queue",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="resources.queue",
            ),
        ),
        migrations.AddIndex(
            model_name="allocation",
            index=models.Index(
                condition=models.Q(("status__in", ("reserved", "active"))),
                fields=["queue"],
                include=("cpu_millis", "memory_mb", "gpu"),
                name="allocation_live_by_queue",
            ),
        ),
    ]
