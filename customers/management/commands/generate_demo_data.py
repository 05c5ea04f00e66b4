import datetime as dt
import time

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from customers.demo_data import DemoDataRefused, demo_shop_generate, demo_window
from customers.models import Customer


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--end {value!r} is not a date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = (
        "Generate a demo shop: products with complements, customers and 18 months of orders "
        "(electronics, a bank, a SaaS product). The same seed gives the same data."
    )

    def add_arguments(self, parser):
        parser.add_argument("--customers", type=int, default=2000, help="number of customers (default 2000)")
        parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
        parser.add_argument(
            "--end", help="last day of the history, exclusive, as YYYY-MM-DD (default: today, UTC)"
        )
        parser.add_argument(
            "--batch-customers", type=int, default=20_000, help="customers generated and written per batch"
        )
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="do nothing (and succeed) if the database already has customers",
        )

    def handle(self, *args, **opts):
        if opts["customers"] < 1:
            raise CommandError("--customers must be at least 1")
        if opts["batch_customers"] < 1:
            raise CommandError("--batch-customers must be at least 1")
        end = _date(opts["end"]) if opts["end"] else None
        if opts["if_empty"] and Customer.objects.exists():
            self.stdout.write(
                f"The database already has {Customer.objects.count():,} customers; no demo data generated."
            )
            return
        start, stop = demo_window(end=end)
        show = opts["verbosity"] > 0
        started = time.perf_counter()
        with tqdm(total=opts["customers"], unit="customers", desc="generating", disable=not show) as bar:
            try:
                counts = demo_shop_generate(
                    customers=opts["customers"],
                    seed=opts["seed"],
                    end=end,
                    batch_customers=opts["batch_customers"],
                    progress=bar.update,
                )
            except DemoDataRefused as exc:
                raise CommandError(f"{exc} (pass --if-empty to skip when data exists)") from None
        seconds = time.perf_counter() - started
        self.stdout.write(f"history: {start:%Y-%m-%d} to {stop:%Y-%m-%d} (seed {opts['seed']})")
        for key, value in counts.items():
            self.stdout.write(f"{key.replace('_', ' ')}: {value}")
        self.stdout.write(f"seconds: {seconds:.1f}")
        if apps.is_installed("campaigns"):
            # A ready segment, template and post-purchase campaign, so the demo has something to run.
            from campaigns.demo import demo_campaign_ensure

            self.stdout.write(f"campaign ready: {demo_campaign_ensure().name}")
        self.stdout.write(self.style.SUCCESS("demo data generated"))
