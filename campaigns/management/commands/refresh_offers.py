from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from campaigns.recommender.service import active_version_id
from campaigns.recommender.stored import offers_refresh


class Command(BaseCommand):
    help = (
        "Score every customer with the active model and store their next-best offers (what the API serves)."
    )

    def handle(self, *args, **options):
        if active_version_id() is None:
            raise CommandError("no active model version: run train_recommender --activate first")
        with tqdm(unit="customer", disable=options["verbosity"] == 0) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            stored = offers_refresh(on_progress=progress)
        self.stdout.write(f"stored offers for {stored} customers")
