import logging

from django.core.management.base import BaseCommand, CommandError

from campaigns.recommender.service import model_version_train


class Command(BaseCommand):
    help = "Train the cross-sell recommender on every order in the database and store a ModelVersion."

    def add_arguments(self, parser):
        parser.add_argument("--horizon-days", type=int, default=30, help="label window after each cutoff")
        parser.add_argument("--max-customers", type=int, default=20_000, help="sampled customers per cutoff")
        parser.add_argument("--seed", type=int, default=0)
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--activate", action="store_true", default=None, help="make it the active version")
        group.add_argument("--no-activate", dest="activate", action="store_false", help="never activate it")

    def handle(self, *args, **options):
        if options["verbosity"] > 1:
            logging.getLogger("campaigns.recommender").setLevel(logging.INFO)
        if options["horizon_days"] < 1:
            raise CommandError("--horizon-days must be at least 1")
        try:
            version = model_version_train(
                horizon_days=options["horizon_days"],
                max_customers=options["max_customers"],
                activate=options["activate"],
                seed=options["seed"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        state = "active" if version.is_active else "not active (activate it in the admin)"
        self.stdout.write(f"{version}: {state}; artefact {version.artefact}")
        validation = version.metrics.get("validation", {})
        if validation:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in validation.items() if k != "objective")
            self.stdout.write(f"  validation period: {shown}")
