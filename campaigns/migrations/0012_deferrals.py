from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0011_accept_is_a_click"),
        ("customers", "0007_customer_time_zone_validated"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="deferrals",
            field=models.PositiveSmallIntegerField(
                default=0,
                help_text="Claims given back unsent: the mail server could not be reached, or time ran out.",
            ),
        ),
        migrations.AddField(
            model_name="message",
            name="deferred_since",
            field=models.DateTimeField(blank=True, help_text="Start of the current run of deferrals; cleared once the server is reached.", null=True),
        ),
        migrations.AlterField(
            model_name="message",
            name="attempts",
            field=models.PositiveSmallIntegerField(
                default=0,
                help_text="Times claimed for sending, deferrals included: attempts minus deferrals were tries.",
            ),
        ),
        migrations.AlterField(
            model_name="message",
            name="send_after",
            field=models.DateTimeField(
                blank=True,
                help_text="Held until then (delay, quiet hours, or the next try after a 4xx or a deferral).",
                null=True,
            ),
        ),
    ]
