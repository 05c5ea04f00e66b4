from django.db import migrations, models

CONSTRAINT = models.CheckConstraint(
    condition=models.Q(("deferrals__lte", models.F("attempts"))), name="message_deferrals_are_claims"
)


def constraint_add(apps, schema_editor):
    # On PostgreSQL, added NOT VALID and validated in a statement of its own (the migration is not atomic,
    # so each commits): checking every message while holding the table's ACCESS EXCLUSIVE lock, as a
    # plain ADD CONSTRAINT does, would stop sending and tracking for the duration.
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_constraint(apps.get_model("campaigns", "Message"), CONSTRAINT)
        return
    schema_editor.execute(
        "ALTER TABLE campaigns_message ADD CONSTRAINT message_deferrals_are_claims "
        "CHECK (deferrals <= attempts) NOT VALID"
    )
    schema_editor.execute("ALTER TABLE campaigns_message VALIDATE CONSTRAINT message_deferrals_are_claims")


def constraint_remove(apps, schema_editor):
    schema_editor.remove_constraint(apps.get_model("campaigns", "Message"), CONSTRAINT)


class Migration(migrations.Migration):
    atomic = False  # the constraint's two steps commit separately on PostgreSQL

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
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddConstraint(model_name="message", constraint=CONSTRAINT)],
            database_operations=[migrations.RunPython(constraint_add, constraint_remove, atomic=False)],
        ),
    ]
