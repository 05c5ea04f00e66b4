"""The dry run shown before Start, computed by a task and read by the admin's page while it runs.

Its figures read every mailable customer of the segment, which at a million recipients takes longer
than a web request may. Its state is kept in the cache for an hour under a random token that the
page's address carries: Redis shared with the workers in production; with the embedded setup tasks
run in the request and the cache is the process's own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass

from django.core.cache import cache

from .caps import policy_default
from .models import Campaign
from .planning import CampaignPreview, campaign_preview

KEEP_SECONDS = 3600
log = logging.getLogger(__name__)


@dataclass
class DryRun:
    state: str  # RUNNING, DONE or FAILED
    started: float  # time.time()
    step: str = ""  # what a running one is doing
    preview: CampaignPreview | None = None
    error: str = ""
    finished: float | None = None  # time.time()
    fingerprint: str = ""  # campaign_fingerprint() of the campaign the figures are for

    RUNNING, DONE, FAILED = "running", "done", "failed"

    @property
    def seconds(self) -> int:
        return int(time.time() - self.started)

    @property
    def finished_at(self) -> dt.datetime | None:
        return dt.datetime.fromtimestamp(self.finished, dt.UTC) if self.finished else None


# Not what the figures depend on: where the campaign is in its life, and who made it.
_NOT_SETTINGS = {"status", "periodic_task", "created_by", "created_at", "started_at", "finished_at"}


def campaign_fingerprint(campaign: Campaign) -> str:
    """A digest of what a dry run's figures depend on: the campaign's settings, its segment's rules and
    its frequency policy. Starting refuses a dry run of settings that have changed since."""
    settings = {
        f.name: f.value_from_object(campaign)
        for f in Campaign._meta.concrete_fields
        if f.name not in _NOT_SETTINGS
    }
    segment = campaign.segment.rules if campaign.segment is not None else None
    policy = campaign.frequency_policy or policy_default()
    limits = {f.name: f.value_from_object(policy) for f in type(policy)._meta.concrete_fields}
    text = json.dumps([settings, segment, limits], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _key(campaign_id: int, token: str) -> str:
    return f"xsell:dry-run:{campaign_id}:{token}"


def _keep(campaign_id: int, token: str, run: DryRun) -> None:
    # Plain values, not the objects: a deploy that changes these classes still reads what was kept.
    cache.set(_key(campaign_id, token), dataclasses.asdict(run), KEEP_SECONDS)


def dry_run_begin(*, campaign_id: int) -> str:
    """A new dry run of the campaign, waiting for its task; the token to read it with."""
    token = secrets.token_urlsafe(12)
    _keep(campaign_id, token, DryRun(state=DryRun.RUNNING, started=time.time(), step="waiting for a worker"))
    return token


def dry_run_read(*, campaign_id: int, token: str) -> DryRun | None:
    """The dry run as it stands, or None when it expired (or never was)."""
    kept = cache.get(_key(campaign_id, token))
    if not isinstance(kept, dict):
        return None
    preview = kept.pop("preview", None)
    try:
        run = DryRun(**kept)
        run.preview = CampaignPreview(**preview) if preview else None
    except TypeError:  # kept by another version of this code
        return None
    return run


def dry_run_compute(*, campaign_id: int, token: str) -> None:
    """Compute the dry run and keep it, step by step; a failure is kept as the error to show."""
    run = dry_run_read(campaign_id=campaign_id, token=token) or DryRun(
        state=DryRun.RUNNING, started=time.time()
    )
    if run.state != DryRun.RUNNING:
        return  # a second delivery of the task: the first one's figures stay

    def step(name: str) -> None:
        run.step = name
        _keep(campaign_id, token, run)

    try:
        campaign = Campaign.objects.select_related("segment", "frequency_policy").get(pk=campaign_id)
        run.fingerprint = campaign_fingerprint(campaign)
        run.preview = campaign_preview(campaign=campaign, on_step=step)
        run.state = DryRun.DONE
    except Exception as exc:  # noqa: BLE001 - shown on the page instead of a dry run that never ends
        log.exception("dry run of campaign %s failed", campaign_id)
        run.state, run.error = DryRun.FAILED, f"{type(exc).__name__}: {exc}"
    run.step, run.finished = "", time.time()
    _keep(campaign_id, token, run)
