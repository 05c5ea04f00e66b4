"""A campaign's life: draft → scheduled → sending → done, with pause, resume and cancel.

Post-purchase campaigns stay in "sending" while active: each matching order plans a message.
Recurring campaigns go back to "scheduled" between runs; each run is keyed by its schedule slot.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo

from celery.schedules import ParseException, crontab
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from .models import Campaign, Message
from .planning import campaign_plan, post_purchase_plan
from .sending import messages_due


class CampaignStateError(ValueError):
    """The action does not fit the campaign's current status."""


def _set_status(campaign: Campaign, new: str, allowed_from: tuple[str, ...], **fields) -> None:
    updated = Campaign.objects.filter(pk=campaign.pk, status__in=allowed_from).update(status=new, **fields)
    if not updated:
        campaign.refresh_from_db()
        raise CampaignStateError(
            f"campaign {campaign.name!r} is {campaign.get_status_display().lower()}; cannot do that"
        )
    campaign.refresh_from_db()


def campaign_start(*, campaign: Campaign, now: dt.datetime | None = None, enqueue: bool = True) -> None:
    """Schedule or start sending. With enqueue, Celery sends after the transaction commits."""
    from .tasks import dispatch

    now = now or timezone.now()
    draft = (Campaign.Status.DRAFT,)
    if campaign.kind == Campaign.Kind.ONE_OFF and campaign.send_at and campaign.send_at > now:
        _set_status(campaign, Campaign.Status.SCHEDULED, draft)  # dispatch_due starts it when due
        return
    if campaign.kind == Campaign.Kind.RECURRING:
        _schedule_recurring(campaign, campaign.schedule_cron)
        _set_status(campaign, Campaign.Status.SCHEDULED, draft)
        return
    # One transaction: no one sees the campaign sending before its messages are planned (a tick's
    # dispatch in between would find nothing to send and mark it done).
    with transaction.atomic():
        _set_status(campaign, Campaign.Status.SENDING, draft + (Campaign.Status.SCHEDULED,), started_at=now)
        if campaign.kind == Campaign.Kind.POST_PURCHASE:
            post_purchase_plan(campaign=campaign, now=now)
        else:
            campaign_plan(campaign=campaign, run_key="once", now=now)
        if enqueue:
            transaction.on_commit(lambda: dispatch.delay(campaign_id=campaign.pk))


def _schedule_recurring(campaign: Campaign, cron: str) -> None:
    fields = cron.split()
    if len(fields) != 5:
        raise CampaignStateError(
            f"schedule {cron!r} is not a 5-field cron expression (minute hour day month weekday)"
        )
    task, _ = PeriodicTask.objects.update_or_create(
        name=f"campaign {campaign.pk}: {campaign.name}"[:200],
        defaults={
            "task": "campaigns.run_recurring",
            "crontab": _crontab(campaign),
            "kwargs": json.dumps({"campaign_id": campaign.pk}),
            "enabled": True,
        },
    )
    Campaign.objects.filter(pk=campaign.pk).update(periodic_task=task)


def _crontab(campaign: Campaign) -> CrontabSchedule:
    minute, hour, day, month, weekday = campaign.schedule_cron.split()
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=minute,
        hour=hour,
        day_of_month=day,
        month_of_year=month,
        day_of_week=weekday,
        timezone=campaign.schedule_timezone,
    )
    return schedule


def schedule_sync(*, campaign: Campaign) -> None:
    """After the schedule of a started recurring campaign was edited: beat's task follows it (enabled or
    not, as it was). Runs are keyed by the schedule's slots, so a task left on the old times would find
    a slot of the new schedule already planned and send nothing."""
    if campaign.kind == Campaign.Kind.RECURRING and campaign.periodic_task_id and campaign.schedule_cron:
        PeriodicTask.objects.filter(pk=campaign.periodic_task_id).update(crontab=_crontab(campaign))


def beat_crontab(cron: str) -> crontab:
    """The 5-field cron as beat reads it (Celery's crontab); ValueError or ParseException if it cannot."""
    minute, hour, day, month, weekday = cron.split()
    return crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday)


def schedule_slot(cron: str, now: dt.datetime, zone: str = "UTC") -> dt.datetime | None:
    """The latest minute at or before `now` at which the 5-field cron, read in the time zone `zone`,
    fires, read as beat reads it (Celery's crontab: a day must match both the day of month and the day
    of week); None when the expression or zone is invalid or the cron fires on none of the last 5
    years' days. A local time that happens twice (the hour clocks go back) is the same slot both times."""
    try:
        schedule = beat_crontab(cron)
        tz = zoneinfo.ZoneInfo(zone)
    except (ValueError, ParseException, zoneinfo.ZoneInfoNotFoundError):
        return None
    local = now.astimezone(tz)
    for back in range(366 * 5):
        date = local.date() - dt.timedelta(days=back)
        if not (
            date.month in schedule.month_of_year
            and date.day in schedule.day_of_month
            and date.isoweekday() % 7 in schedule.day_of_week  # Sunday is 0
        ):
            continue
        for h in sorted(schedule.hour, reverse=True):
            for m in sorted(schedule.minute, reverse=True):
                slot = dt.datetime(date.year, date.month, date.day, h, m, tzinfo=tz)
                if slot <= now:
                    return slot.astimezone(dt.UTC)
    return None


# Beat sends a run's task at its slot by beat's clock; a worker whose clock is a little behind would
# read the tick as the previous slot's (already planned: the run would plan nothing).
SLOT_EARLY = dt.timedelta(seconds=30)


def run_key(campaign: Campaign, now: dt.datetime) -> str:
    """A recurring run's key: the schedule slot it belongs to (UTC). A beat tick that runs late (a busy
    worker) or twice (two beat processes) finds the same slot, so the slot is planned once; a schedule
    that fires more often than hourly gets a run per slot; a tick up to SLOT_EARLY before its slot (the
    worker's clock behind beat's) counts for that slot. Without a readable schedule: the minute."""
    slot = schedule_slot(campaign.schedule_cron, now + SLOT_EARLY, campaign.schedule_timezone)
    return (slot or now.astimezone(dt.UTC).replace(second=0, microsecond=0)).strftime("%Y-%m-%dT%H:%M")


def recurring_run(*, campaign: Campaign, now: dt.datetime | None = None) -> None:
    """One scheduled run, keyed by its schedule slot (run_key): two beat ticks for one slot plan one run."""
    now = now or timezone.now()
    with transaction.atomic():  # as in campaign_start: sending only once the run is planned
        # Conditional: a campaign paused or cancelled since the caller read it stays so.
        started = Campaign.objects.filter(
            pk=campaign.pk, status__in=(Campaign.Status.SCHEDULED, Campaign.Status.SENDING)
        ).update(status=Campaign.Status.SENDING, started_at=now)
        campaign.refresh_from_db()
        # Before slot keys, a run was keyed by the hour it ran in: a task redelivered across the upgrade
        # must not plan that hour's run again under its new key.
        legacy = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H")
        if started and not campaign.runs.filter(key=legacy).exists():
            campaign_plan(campaign=campaign, run_key=run_key(campaign, now), now=now)


def campaign_pause(*, campaign: Campaign) -> None:
    _set_status(campaign, Campaign.Status.PAUSED, (Campaign.Status.SENDING, Campaign.Status.SCHEDULED))
    if campaign.periodic_task_id:
        PeriodicTask.objects.filter(pk=campaign.periodic_task_id).update(enabled=False)


def campaign_resume(*, campaign: Campaign) -> None:
    """Back to what it was doing when paused: a campaign that was waiting for its time (a one-off not
    started yet, a recurring one between runs) is scheduled again, the others send on."""
    from .tasks import dispatch

    busy = campaign.messages.filter(status__in=(Message.Status.PLANNED, Message.Status.SENDING)).exists()
    waiting = (campaign.kind == Campaign.Kind.ONE_OFF and campaign.started_at is None) or (
        campaign.kind == Campaign.Kind.RECURRING and not busy
    )
    status = Campaign.Status.SCHEDULED if waiting else Campaign.Status.SENDING
    _set_status(campaign, status, (Campaign.Status.PAUSED,))  # first: it may refuse
    # The time paused does not count towards giving up on messages the mail server could not take.
    campaign.messages.filter(status=Message.Status.PLANNED, deferred_since__isnull=False).update(
        deferred_since=timezone.now()
    )
    if campaign.kind == Campaign.Kind.RECURRING and campaign.periodic_task_id:
        PeriodicTask.objects.filter(pk=campaign.periodic_task_id).update(enabled=True)
    if not waiting:  # a scheduled one starts at its time (dispatch_due, or beat's task)
        transaction.on_commit(lambda: dispatch.delay(campaign_id=campaign.pk))


def campaign_cancel(*, campaign: Campaign) -> int:
    """Stop for good; planned messages are skipped (messages already claimed finish their send)."""
    _set_status(
        campaign,
        Campaign.Status.CANCELLED,
        (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.SENDING, Campaign.Status.PAUSED),
        finished_at=timezone.now(),
    )
    if campaign.periodic_task_id:
        PeriodicTask.objects.filter(pk=campaign.periodic_task_id).update(enabled=False)
    return campaign.messages.filter(status=Message.Status.PLANNED).update(
        status=Message.Status.SKIPPED, skip_reason=Message.SkipReason.CANCELLED
    )


def campaign_batches(*, campaign: Campaign, now: dt.datetime | None = None) -> list[list[int]]:
    """The campaign's due messages, cut into batches for the send tasks."""
    if campaign.status != Campaign.Status.SENDING:
        return []
    ids = messages_due(campaign=campaign, now=now)
    size = settings.SEND_BATCH_SIZE
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def campaign_finish_if_done(*, campaign: Campaign) -> bool:
    """A one-off or recurring run is done when nothing is planned or being sent."""
    if campaign.kind == Campaign.Kind.POST_PURCHASE:
        return False
    busy = campaign.messages.filter(status__in=(Message.Status.PLANNED, Message.Status.SENDING)).exists()
    if busy:
        return False
    new = Campaign.Status.SCHEDULED if campaign.kind == Campaign.Kind.RECURRING else Campaign.Status.DONE
    return bool(
        Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.SENDING).update(
            status=new, finished_at=timezone.now()
        )
    )


def campaigns_due(*, now: dt.datetime | None = None) -> list[int]:
    """Scheduled one-offs whose time has come; one whose send time was cleared meanwhile (the form allows
    it: "send when started") is due at once, or it would stay scheduled for ever."""
    now = now or timezone.now()
    return list(
        Campaign.objects.filter(kind=Campaign.Kind.ONE_OFF, status=Campaign.Status.SCHEDULED)
        .filter(Q(send_at__lte=now) | Q(send_at__isnull=True))
        .values_list("pk", flat=True)
    )
