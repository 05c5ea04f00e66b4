import logging

from celery import shared_task
from django.utils import timezone

from .importing import ImportFailed, orders_import
from .models import ImportRun

log = logging.getLogger(__name__)


@shared_task(name="customers.import_files", queue="default")
def import_files(*, import_run_id: int, skip_invalid: bool = False) -> None:
    """Run an import uploaded in the admin and record its outcome on the ImportRun row."""
    run = ImportRun.objects.get(pk=import_run_id)
    files = run.summary.get("files", {})
    try:
        summary = orders_import(
            path=files["orders"],
            customers_path=files.get("customers"),
            products_path=files.get("products"),
            skip_invalid=skip_invalid,
            import_run=run,
        )
    except ImportFailed as exc:
        ImportRun.objects.filter(pk=run.pk).update(
            status=ImportRun.Status.FAILED,
            finished_at=timezone.now(),
            errors=[str(e) for e in exc.errors[:1000]],
            summary={"files": files, "invalid": exc.total},
        )
        return
    except Exception as exc:  # a bug of ours: the run must not stay "running", and the admin shows why
        log.exception("import run %s failed", run.pk)
        ImportRun.objects.filter(pk=run.pk).update(
            status=ImportRun.Status.FAILED,
            finished_at=timezone.now(),
            errors=[f"the import stopped on an unexpected error ({type(exc).__name__}: {exc})"],
            summary={"files": files},
        )
        return
    ImportRun.objects.filter(pk=run.pk).update(
        status=ImportRun.Status.DONE,
        finished_at=timezone.now(),
        summary={"files": files, **summary.as_dict()},
        errors=[str(e) for e in summary.errors],
    )
