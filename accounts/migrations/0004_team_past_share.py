from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_team_fair_share_weight"),
    ]

    operations = [
        migrations.AddField(
            model_name="team",
            name="past_share",
            field=models.FloatField(db_default=0, default=0, editable=False),
        ),
        migrations.AddConstraint(
            model_name="team",
            constraint=models.CheckConstraint(
                condition=models.Q(("past_share__gte", 0), ("past_share__lte", 1)),
                name="team_past_share_range",
            ),
        ),
    ]
