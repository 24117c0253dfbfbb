# The queue slug column goes; the foreign key takes its name and becomes required, and
# the cycle's index of pending jobs is per queue.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0003_queue_reference'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='job',
            name='job_pending_order',
        ),
        migrations.RemoveField(
            model_name='job',
            name='queue',
        ),
        migrations.RemoveField(
            model_name='jobdefinition',
            name='queue',
        ),
        migrations.RenameField(
            model_name='job',
            old_name='queue_ref',
            new_name='queue',
        ),
        migrations.RenameField(
            model_name='jobdefinition',
            old_name='queue_ref',
            new_name='queue',
        ),
        migrations.AlterField(
            model_name='job',
            name='queue',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='%(class)ss', to='resources.queue'),
        ),
        migrations.AlterField(
            model_name='jobdefinition',
            name='queue',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='%(class)ss', to='resources.queue'),
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(models.F('queue'), models.OrderBy(models.F('priority'), descending=True), models.F('created_at'), models.F('id'), condition=models.Q(('status', 'pending')), name='job_pending_by_queue'),
        ),
    ]
