import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_audit_event"),
    ]

    operations = [
        migrations.AddField(
            model_name="team",
            name="fair_share_weight",
            field=models.PositiveIntegerField(
                db_default=1,
                default=1,
                help_text="Fair share between the teams of a queue: weight 3 deserves three "
                "times what weight 1 does of a queue they share.",
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(1000),
                ],
            ),
        ),
        migrations.AddConstraint(
            model_name="team",
            constraint=models.CheckConstraint(
                condition=models.Q(("fair_share_weight__gte", 1), ("fair_share_weight__lte", 1000)),
                name="team_fair_share_weight_range",
            ),
        ),
    ]
