"""Frequency policy: how many marketing emails one customer may get, how close together, and when.

Checked and recorded inside the claim transaction, under a lock on the customer's row, so concurrent
workers sending different campaigns to the same customer cannot both pass the cap.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass

from django.db.models import Count, Max, Q

from .models import FrequencyPolicy, Message

# States that count as "this customer was (or may have been) emailed": a claimed message counts at
# once, so a second worker sees it before the SMTP conversation even starts.
COUNTED = (Message.Status.SENDING, Message.Status.SENT, Message.Status.UNCERTAIN)


@dataclass(frozen=True)
class CapDecision:
    allowed: bool
    reason: str = ""  # "capped" or "quiet_hours"
    wait_until: dt.datetime | None = None  # quiet hours: try again then


def policy_default() -> FrequencyPolicy:
    policy = FrequencyPolicy.objects.filter(is_default=True).first()
    if policy is None:
        policy, _ = FrequencyPolicy.objects.get_or_create(
            name="Default",
            defaults={"is_default": True, "max_messages": 2, "window_days": 7, "min_gap_hours": 24},
        )
    return policy


class CapLedger:
    """Recent sends of a batch's customers, read once under their row locks and updated as we claim."""

    def __init__(self, *, policy: FrequencyPolicy, customer_ids: list[int], now: dt.datetime):
        self.policy, self.now = policy, now
        window = now - dt.timedelta(days=policy.window_days)
        # The last send is looked for as far back as the gap reaches, which may be beyond the window.
        since = min(window, now - dt.timedelta(hours=policy.min_gap_hours))
        rows = (
            Message.objects.filter(customer_id__any=customer_ids, status__in=COUNTED, claimed_at__gte=since)
            .values("customer_id")
            .annotate(n=Count("id", filter=Q(claimed_at__gte=window)), last=Max("claimed_at"))
        )
        self.count: dict[int, int] = defaultdict(int)
        self.last: dict[int, dt.datetime] = {}
        for row in rows:
            self.count[row["customer_id"]] = row["n"]
            self.last[row["customer_id"]] = row["last"]

    def check(self, *, customer_id: int, timezone_name: str) -> CapDecision:
        policy = self.policy
        if self.count[customer_id] >= policy.max_messages:
            return CapDecision(False, Message.SkipReason.CAPPED)
        last = self.last.get(customer_id)
        if last is not None and self.now - last < dt.timedelta(hours=policy.min_gap_hours):
            return CapDecision(False, Message.SkipReason.CAPPED)
        wait = quiet_hours_end(policy=policy, timezone_name=timezone_name, now=self.now)
        if wait is not None:
            return CapDecision(False, Message.SkipReason.QUIET_HOURS, wait_until=wait)
        return CapDecision(True)

    def record(self, *, customer_id: int) -> None:
        self.count[customer_id] += 1
        self.last[customer_id] = self.now


def quiet_hours_end(*, policy: FrequencyPolicy, timezone_name: str, now: dt.datetime) -> dt.datetime | None:
    """If it is quiet time where the customer lives, when it ends (UTC); else None."""
    if policy.quiet_start is None or policy.quiet_end is None or policy.quiet_start == policy.quiet_end:
        return None  # equal times are refused by a constraint: never quiet, not always
    try:
        zone = zoneinfo.ZoneInfo(timezone_name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = zoneinfo.ZoneInfo("UTC")
    local = now.astimezone(zone)
    start, end, t = policy.quiet_start, policy.quiet_end, local.time()
    inside = (start <= t < end) if start < end else (t >= start or t < end)  # may span midnight
    if not inside:
        return None
    end_day = local.date() if (start < end or t < end) else local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(end_day, end, tzinfo=zone).astimezone(dt.UTC)
