from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from customers.importing import ImportFailed, orders_import


class Command(BaseCommand):
    help = "Import a shop's orders CSV (one row per order line; .csv or .csv.gz), with optional customers/products files."

    def add_arguments(self, parser):
        parser.add_argument("orders", help="orders file (canonical columns, see README)")
        parser.add_argument(
            "--customers", help="customers file: customer_id, email, names, country, timezone, consent"
        )
        parser.add_argument(
            "--products", help="products file: sku, name, category, price, flags, URLs, complements"
        )
        parser.add_argument(
            "--skip-invalid", action="store_true", help="write the valid rows and report the invalid ones"
        )
        parser.add_argument("--chunksize", type=int, default=100_000)

    def handle(self, *args, **opts):
        files = [Path(p) for p in (opts["orders"], opts["customers"], opts["products"]) if p]
        for path in files:
            if not path.is_file():
                raise CommandError(f"{path}: no such file")
        total = sum(p.stat().st_size for p in files)
        show = opts["verbosity"] > 0
        with tqdm(total=total, unit="B", unit_scale=True, desc="reading", disable=not show) as bar:
            try:
                summary = orders_import(
                    path=files[0],
                    customers_path=opts["customers"],
                    products_path=opts["products"],
                    skip_invalid=opts["skip_invalid"],
                    chunksize=opts["chunksize"],
                    on_bytes=bar.update,
                )
            except ImportFailed as exc:
                raise CommandError(str(exc)) from None
        for line in summary.lines():
            self.stdout.write(line)
        self.stdout.write(self.style.SUCCESS("import finished"))
