import json
import logging
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError

from campaigns.recommender.evaluation import evaluation_run, evaluation_table


def _date(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--cutoff {value!r} is not an ISO date (YYYY-MM-DD)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Evaluate a freshly trained recommender and the baselines on the orders in the database."

    def add_arguments(self, parser):
        parser.add_argument("--protocol", choices=["last-order", "time-split"], default="last-order")
        parser.add_argument(
            "--cutoff", type=_date, help="time-split: start of the test window (default: end - horizon)"
        )
        parser.add_argument("--horizon-days", type=int, default=30)
        parser.add_argument("--k", type=int, default=10)
        parser.add_argument(
            "--mode",
            choices=["explore", "all"],
            default="explore",
            help="explore: only products new to the customer; all: their own products too",
        )
        parser.add_argument("--json", dest="json_file", help="also write the figures to this JSON file")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **options):
        if options["k"] < 1 or options["horizon_days"] < 1:
            raise CommandError("--k and --horizon-days must be at least 1")
        if options["verbosity"] > 1:
            logging.getLogger("campaigns.recommender").setLevel(logging.INFO)
        try:
            result = evaluation_run(
                protocol=options["protocol"],
                cutoff=options["cutoff"],
                horizon_days=options["horizon_days"],
                k=options["k"],
                mode=options["mode"],
                seed=options["seed"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"protocol {result['protocol']}, mode {result['mode']}, {result['customers']} customers, "
            f"model {result['algorithm']} ({result['seconds']}s)"
        )
        self.stdout.write(evaluation_table(result))
        if options["json_file"]:
            with open(options["json_file"], "w") as fh:
                json.dump(result, fh, indent=2, default=str)
