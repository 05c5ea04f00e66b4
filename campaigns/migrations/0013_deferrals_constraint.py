from django.db import migrations, models


class AddConstraintWithoutLongLock(migrations.AddConstraint):
    """On PostgreSQL, the CHECK constraint is added NOT VALID, then validated in a statement of its own
    (the migration is not atomic, so each commits): a plain ADD CONSTRAINT checks every message while
    holding the table's ACCESS EXCLUSIVE lock, stopping sending and tracking for the duration. Adding
    it is skipped when it exists (a run of this migration interrupted before it was recorded).
    Elsewhere, Django's AddConstraint."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        name = self.constraint.name
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_constraint WHERE conname = %s", [name])
            exists = cursor.fetchone() is not None
        if not exists:
            schema_editor.execute(
                f"ALTER TABLE campaigns_message ADD CONSTRAINT {name} CHECK (deferrals <= attempts) NOT VALID"
            )
        schema_editor.execute(f"ALTER TABLE campaigns_message VALIDATE CONSTRAINT {name}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("campaigns", "0012_deferrals")]

    operations = [
        AddConstraintWithoutLongLock(
            model_name="message",
            constraint=models.CheckConstraint(
                condition=models.Q(("deferrals__lte", models.F("attempts"))), name="message_deferrals_are_claims"
            ),
        ),
    ]
