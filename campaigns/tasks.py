"""Celery tasks: they take ids, call one service function and retry on transient errors."""

import contextlib
import logging

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from .dry_runs import dry_run_compute
from .lifecycle import (
    CampaignStateError,
    campaign_batches,
    campaign_finish_if_done,
    campaign_start,
    campaigns_due,
    recurring_run,
)
from .models import Campaign
from .planning import post_purchase_plan
from .sending import messages_send, messages_sweep_stuck

TRANSIENT = (OperationalError, ConnectionError)
log = logging.getLogger(__name__)


@shared_task(
    name="campaigns.dispatch", queue="default", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5
)
def dispatch(*, campaign_id: int) -> int:
    """Fan a sending campaign's due messages out to send_batch tasks."""
    campaign = Campaign.objects.get(pk=campaign_id)
    batches = campaign_batches(campaign=campaign)
    for ids in batches:
        send_batch.delay(campaign_id=campaign_id, message_ids=ids)
    if not batches:
        campaign_finish_if_done(campaign=campaign)
    return len(batches)


@shared_task(
    name="campaigns.send_batch",
    queue="default",
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=5,
    # A batch's courier hands the server nothing after 90% of SEND_STUCK_MINUTES (deliver.send_deadline),
    # so a healthy batch ends before the sweep. One stuck past it (a database lock) is killed a minute
    # after the sweep called its messages "uncertain", freeing the worker. No soft limit: its exception
    # can land anywhere, in the broad handlers that keep one email's failure from stopping a batch too.
    time_limit=settings.SEND_STUCK_MINUTES * 60 + 60,
)
def send_batch(*, campaign_id: int, message_ids: list[int]) -> dict:
    counts = messages_send(message_ids=message_ids)
    if counts["retry"]:
        dispatch.apply_async(kwargs={"campaign_id": campaign_id}, countdown=settings.SEND_RETRY_BASE_SECONDS)
    campaign_finish_if_done(campaign=Campaign.objects.get(pk=campaign_id))
    return counts


# Not acknowledged late: a dry run whose worker died is not worth redelivering (the page says it waits,
# and Start asks for a new one); bounded like a batch, so a stuck one frees its worker.
@shared_task(
    name="campaigns.dry_run", queue="default", acks_late=False, time_limit=settings.SEND_STUCK_MINUTES * 60
)
def campaign_dry_run(*, campaign_id: int, token: str) -> None:
    """The dry run the admin shows before Start: at a million recipients, longer than a request may take."""
    dry_run_compute(campaign_id=campaign_id, token=token)


@shared_task(name="campaigns.run_recurring", queue="default", autoretry_for=TRANSIENT, retry_backoff=True)
def run_recurring(*, campaign_id: int) -> None:
    recurring_run(campaign=Campaign.objects.get(pk=campaign_id))
    dispatch.delay(campaign_id=campaign_id)


@shared_task(
    name="campaigns.plan_post_purchase", queue="default", autoretry_for=TRANSIENT, retry_backoff=True
)
def plan_post_purchase(*, order_ids: list[int] | None = None) -> int:
    """Plan post-purchase messages for new orders (or all recent orders when order_ids is None)."""
    planned = 0
    for campaign in Campaign.objects.filter(kind=Campaign.Kind.POST_PURCHASE, status=Campaign.Status.SENDING):
        try:
            planned += post_purchase_plan(campaign=campaign, order_ids=order_ids)
        except TRANSIENT:
            raise  # the task is retried: planning is idempotent
        except Exception:  # noqa: BLE001 - one campaign's bad settings must not stop the others' emails
            log.exception("post-purchase campaign %s (%s) could not plan", campaign.pk, campaign.name)
    return planned


@shared_task(name="campaigns.tick", queue="default", autoretry_for=TRANSIENT, retry_backoff=True)
def tick() -> None:
    """Every minute (beat): sweep stuck sends, start due one-offs, plan post-purchase, dispatch."""
    messages_sweep_stuck()
    for campaign_id in campaigns_due():
        # Started meanwhile (another tick, the admin) or cancelled: the rest of the tick goes on.
        with contextlib.suppress(CampaignStateError):
            campaign_start(campaign=Campaign.objects.get(pk=campaign_id))
    plan_post_purchase()
    for campaign_id in Campaign.objects.filter(status=Campaign.Status.SENDING).values_list("pk", flat=True):
        dispatch.delay(campaign_id=campaign_id)


@shared_task(name="campaigns.attribute_recent", queue="default", autoretry_for=TRANSIENT, retry_backoff=True)
def attribute_recent() -> int:
    """Periodic (beat): attribute recent orders that no import signal covered (e.g. created in the admin)."""
    from .attribution import conversions_attribute_recent

    return conversions_attribute_recent()


@shared_task(name="campaigns.attribute_orders", queue="default", autoretry_for=TRANSIENT, retry_backoff=True)
def attribute_orders(*, order_ids: list[int]) -> int:
    """After an import commits: attribute its orders to the messages that earned them."""
    from .attribution import conversions_attribute

    return conversions_attribute(order_ids=order_ids)


@shared_task(name="campaigns.refresh_reports", queue="default", autoretry_for=TRANSIENT, retry_backoff=True)
def refresh_reports() -> int:
    """Periodic (beat): recompute cached reports, so a big campaign's report page opens at once."""
    from .reports import reports_refresh

    return reports_refresh()


@shared_task(name="campaigns.tracking_flush", queue="default", autoretry_for=TRANSIENT, retry_backoff=True)
def tracking_flush() -> int:
    """Periodic (beat, every 10 s): write the opens and clicks queued in Redis (TRACKING_BUFFER)."""
    from .tracking_buffer import tracking_buffer_flush

    # Whenever Redis is configured, not only while the buffer is on: turning TRACKING_BUFFER off must
    # not strand what was queued before.
    return tracking_buffer_flush() if settings.REDIS_URL else 0


# Celery autodiscovers campaigns.tasks only: importing registers the nightly training task too.
from .recommender.tasks import train_recommender  # noqa: E402, F401
