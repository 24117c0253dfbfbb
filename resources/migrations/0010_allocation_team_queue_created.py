from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("resources", "0009_allocation_team"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="allocation",
            index=models.Index(fields=["team", "-created_at"], name="allocation_team_created"),
        ),
        migrations.AddIndex(
            model_name="allocation",
            index=models.Index(fields=["queue", "-created_at"], name="allocation_queue_created"),
        ),
    ]
