# Jobs and definitions name their queue by foreign key: first the new column, filled
# from the old slug. (The old column goes in 0004: PostgreSQL refuses to alter a table
# with pending foreign-key checks in the same transaction.)

import django.db.models.deletion
from django.db import migrations, models


def link_queues(apps, schema_editor):
    """Each job and definition gets the queue of its slug. Names in use with no queue yet
    get one open to every team, as the slug was before: nobody loses a queue."""
    Queue = apps.get_model("resources", "Queue")
    models = [apps.get_model("jobs", name) for name in ("Job", "JobDefinition")]
    names = set()
    for model in models:
        names.update(model.objects.values_list("queue", flat=True).distinct())
    names -= set(Queue.objects.values_list("name", flat=True))
    Queue.objects.bulk_create([Queue(name=name, all_teams=True) for name in sorted(names)])
    for model_name in ("Job", "JobDefinition"):
        model = apps.get_model("jobs", model_name)
        for queue in Queue.objects.all():
            model.objects.filter(queue=queue.name).update(queue_ref=queue)


def unlink_queues(apps, schema_editor):
    Queue = apps.get_model("resources", "Queue")
    for model_name in ("Job", "JobDefinition"):
        model = apps.get_model("jobs", model_name)
        for queue in Queue.objects.all():
            model.objects.filter(queue_ref=queue).update(queue=queue.name)


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0002_reliable_execution'),
        ('resources', '0002_queue'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='queue_ref',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='resources.queue'),
        ),
        migrations.AddField(
            model_name='jobdefinition',
            name='queue_ref',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='resources.queue'),
        ),
        migrations.RunPython(link_queues, unlink_queues),
    ]
