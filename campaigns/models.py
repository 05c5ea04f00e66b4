import base64
import os
import threading

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from customers.models import Customer, Order, Product, validate_time_zone

_TOKEN_BYTES = 16
_TOKENS_PER_DRAW = 256
_entropy = threading.local()


def _entropy_forget() -> None:
    # A forked worker must not hand out the tokens its parent drew: they would be the same.
    _entropy.__dict__.clear()


os.register_at_fork(after_in_child=_entropy_forget)


def random_bytes(n: int) -> bytes:
    """n bytes from os.urandom, drawn _TOKEN_BYTES * _TOKENS_PER_DRAW at a time (per thread).

    A send makes about 15 tokens an email, and each os.urandom call releases the GIL: one call per
    token left the composing thread waiting behind the courier's thread for the GIL again and again."""
    pool, at = getattr(_entropy, "pool", b""), getattr(_entropy, "at", 0)
    if at + n > len(pool):
        pool, at = os.urandom(max(n, _TOKEN_BYTES * _TOKENS_PER_DRAW)), 0
        _entropy.pool = pool
    _entropy.at = at + n
    return pool[at : at + n]


def new_token() -> str:
    """128 random bits, URL-safe: the only identifier a recipient's links carry (as secrets.token_urlsafe)."""
    return base64.urlsafe_b64encode(random_bytes(_TOKEN_BYTES)).rstrip(b"=").decode("ascii")


class ModelVersion(models.Model):
    """A trained recommender: its data window, parameters, offline metrics and artefact file."""

    trained_at = models.DateTimeField(auto_now_add=True)
    data_start = models.DateTimeField(null=True, blank=True)
    data_end = models.DateTimeField(null=True, blank=True)
    algorithm = models.CharField(max_length=100, blank=True)
    params = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    artefact = models.CharField(max_length=500, help_text="joblib file, relative to MODEL_DIR")
    is_active = models.BooleanField(default=False)
    notes = models.TextField(blank=True)

    class Meta:
        ordering = ["-trained_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="one_active_model"
            ),
        ]

    def __str__(self) -> str:
        return f"model v{self.pk} ({self.algorithm}, {self.trained_at:%Y-%m-%d %H:%M})"


class StoredOffers(models.Model):
    """A customer's next-best offers computed ahead by the active model (campaigns.recommender.stored).

    The API answers from this row while it is still right: same model version, computed after the
    customer's last order, recent enough; otherwise it scores live and replaces the row.
    """

    customer = models.OneToOneField(Customer, primary_key=True, on_delete=models.CASCADE, related_name="+")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    computed_at = models.DateTimeField()
    offers = models.JSONField(default=list, help_text="[[product id, score, reason], …], best first")

    class Meta:
        verbose_name_plural = "stored offers"

    def __str__(self) -> str:
        return f"offers for customer {self.customer_id} (model v{self.model_version_id})"


class FrequencyPolicy(models.Model):
    """How often one customer may be emailed. The default policy applies unless a campaign names another."""

    name = models.CharField(max_length=100, unique=True)
    is_default = models.BooleanField(default=False)
    max_messages = models.PositiveIntegerField(default=2, validators=[MinValueValidator(1)])
    # Upper bounds: a window or gap of centuries is no policy, and dates that far back overflow.
    window_days = models.PositiveIntegerField(
        default=7, validators=[MinValueValidator(1), MaxValueValidator(366)]
    )
    min_gap_hours = models.PositiveIntegerField(default=24, validators=[MaxValueValidator(24 * 366)])
    quiet_start = models.TimeField(
        null=True, blank=True, help_text="Start of quiet hours, customer's local time"
    )
    quiet_end = models.TimeField(null=True, blank=True)
    quiet_deadline_hours = models.PositiveIntegerField(
        default=24,
        validators=[MaxValueValidator(24 * 31)],
        help_text="A message held for quiet hours is skipped if it cannot go out within this time.",
    )

    class Meta:
        verbose_name_plural = "frequency policies"
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="one_default_policy",
                violation_error_message="Another policy is already the default: untick it there first.",
            ),
            models.CheckConstraint(
                condition=Q(quiet_start__isnull=True, quiet_end__isnull=True)
                | Q(quiet_start__isnull=False, quiet_end__isnull=False),
                name="policy_quiet_hours_both_or_none",
                violation_error_message="Give both the start and the end of quiet hours, or neither.",
            ),
            # Equal times would read as quiet all day (nothing ever sent) or never: neither is meant.
            models.CheckConstraint(
                condition=Q(quiet_start__isnull=True) | ~Q(quiet_start=F("quiet_end")),
                name="policy_quiet_hours_not_equal",
                violation_error_message="Quiet hours must start and end at different times.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name}: ≤{self.max_messages} per {self.window_days} days"


class Segment(models.Model):
    """Rules (a JSON tree of conditions, AND/OR groups) compiled by campaigns.segments into one query."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    rules = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


class EmailTemplate(models.Model):
    """Subject, HTML and plain-text Jinja sources, rendered in a sandbox on a shared layout."""

    name = models.CharField(max_length=200, unique=True)
    layout = models.CharField(max_length=100, default="email/base.html")
    subject = models.CharField(max_length=500)
    html = models.TextField()
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


class Campaign(models.Model):
    class Kind(models.TextChoices):
        ONE_OFF = "one_off", "One-off"
        RECURRING = "recurring", "Recurring"
        POST_PURCHASE = "post_purchase", "Post-purchase"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        SENDING = "sending", "Sending"
        PAUSED = "paused", "Paused"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.ONE_OFF)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    segment = models.ForeignKey(
        Segment, on_delete=models.PROTECT, null=True, blank=True, related_name="campaigns"
    )
    template = models.ForeignKey(EmailTemplate, on_delete=models.PROTECT, related_name="campaigns")
    offers_per_email = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    min_offer_score = models.FloatField(default=0.0)
    allowed_categories = models.JSONField(default=list, blank=True, help_text="Empty: any category.")
    holdout_percent = models.PositiveSmallIntegerField(default=10, validators=[MaxValueValidator(50)])
    from_email = models.EmailField(blank=True, help_text="Empty: the site's default sender.")
    utm_source = models.CharField(max_length=100, default="xsell")
    utm_medium = models.CharField(max_length=100, default="email")
    utm_campaign = models.CharField(max_length=100, blank=True)
    frequency_policy = models.ForeignKey(
        FrequencyPolicy,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        help_text="Empty: the default policy.",
    )
    # One-off: when to send (empty: now). Recurring: the beat schedule.
    send_at = models.DateTimeField(null=True, blank=True)
    schedule_cron = models.CharField(
        max_length=100,
        blank=True,
        default="0 9 * * 1",
        help_text="Recurring: when to run, as cron (minute hour day month weekday, Sunday 0), in the "
        "schedule's time zone. A day must match both day fields: '0 9 1-7 * 1' is each month's first Monday.",
    )
    schedule_timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="Recurring: the time zone the schedule is read in (IANA, e.g. Europe/London): "
        "'0 9 * * 1' stays 09:00 there across daylight saving time.",
    )
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", on_delete=models.SET_NULL, null=True, blank=True
    )
    # Post-purchase triggers: an order matching these, delay_hours after it was placed.
    delay_hours = models.PositiveIntegerField(default=24, validators=[MaxValueValidator(24 * 366)])
    trigger_skus = models.JSONField(default=list, blank=True)
    trigger_categories = models.JSONField(default=list, blank=True)
    trigger_min_value = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    trigger_lookback_days = models.PositiveIntegerField(
        default=3,
        validators=[MaxValueValidator(366)],
        help_text="Orders older than this are never a trigger (a new campaign does not mail old buyers).",
    )
    is_simulated = models.BooleanField(default=False, help_text="Demo data: its events are simulated.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [("send_campaign", "Can start, pause, resume and cancel sending")]
        constraints = [
            models.CheckConstraint(
                condition=Q(offers_per_email__gte=1, offers_per_email__lte=5), name="campaign_offers_1_to_5"
            ),
            models.CheckConstraint(
                condition=Q(holdout_percent__gte=0, holdout_percent__lte=50), name="campaign_holdout_0_to_50"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class CampaignRun(models.Model):
    """One send of a campaign: 'once' for a one-off, the schedule slot for a recurring one.

    Unique per (campaign, key), so two beat ticks for the same slot plan one run, not two.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="runs")
    key = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    planned_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "key"], name="campaignrun_unique_key")]

    def __str__(self) -> str:
        return f"{self.campaign} / {self.key}"


class Message(models.Model):
    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        UNCERTAIN = "uncertain", "Uncertain (never resent)"
        SKIPPED = "skipped", "Skipped"
        HOLDOUT = "holdout", "Holdout (not sent)"

    class SkipReason(models.TextChoices):
        NONE = "", "—"
        CAPPED = "capped", "Frequency cap"
        SUPPRESSED = "suppressed", "Suppressed or no consent"
        NO_OFFER = "no_offer", "No offer above the minimum score"
        QUIET_HOURS = "quiet_hours", "Quiet hours deadline passed"
        RENDER_ERROR = "render_error", "Template failed to render"
        CANCELLED = "cancelled", "Campaign cancelled"

    # No single-column indexes where a composite one below starts with the column: every index is
    # written again by each status change (two per email), so redundant ones slow sending down.
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="messages", db_index=False)
    run = models.ForeignKey(
        CampaignRun, on_delete=models.CASCADE, null=True, blank=True, related_name="messages"
    )
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="messages", db_index=False)
    trigger_order = models.ForeignKey(
        Order, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PLANNED)
    skip_reason = models.CharField(max_length=16, choices=SkipReason.choices, blank=True, default="")
    # Unique by a Meta constraint: unique=True would add a LIKE index on PostgreSQL, which a token never needs.
    token = models.CharField(max_length=32, default=new_token)
    send_after = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Held until then (delay, quiet hours, or the next try after a 4xx or a deferral).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True, db_index=True)
    attempts = models.PositiveSmallIntegerField(
        default=0,
        help_text="Times claimed for sending, deferrals included: attempts minus deferrals were tries.",
    )
    # A claim given back before the server saw the message (it could not be reached, or the batch ran
    # out of time) is a deferral: it counts towards SEND_DEFER_HOURS, not towards SEND_MAX_ATTEMPTS, so a
    # mail server down for an hour does not fail a whole campaign.
    deferrals = models.PositiveSmallIntegerField(
        default=0,
        help_text="Claims given back unsent: the mail server could not be reached, or time ran out.",
    )
    deferred_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Start of the current run of deferrals; cleared once the server is reached.",
    )
    message_id = models.CharField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    is_simulated = models.BooleanField(default=False)
    # First touches, the earliest event of each kind (see Event.FIRST_TOUCH), kept as events are recorded:
    # a report counts a million messages' funnel in one pass over them instead of grouping their events.
    delivered_at = models.DateTimeField(null=True, blank=True, help_text="First ESP delivered event.")
    opened_at = models.DateTimeField(
        null=True, blank=True, help_text="First open, click or acceptance by a person."
    )
    clicked_at = models.DateTimeField(
        null=True, blank=True, help_text="First click or acceptance by a person."
    )
    accepted_at = models.DateTimeField(null=True, blank=True, help_text="First accepted offer.")

    class Meta:
        constraints = [
            # Exactly once: a retry, a duplicate task delivery or a second scheduler cannot plan a second
            # message for the same customer and occasion.
            models.UniqueConstraint(
                fields=["campaign", "customer", "trigger_order"],
                condition=Q(trigger_order__isnull=False),
                name="message_once_per_trigger_order",
            ),
            models.UniqueConstraint(
                fields=["campaign", "customer", "run"],
                condition=Q(trigger_order__isnull=True),
                name="message_once_per_run",
            ),
            models.CheckConstraint(
                condition=Q(status="skipped") | Q(skip_reason=""),
                name="message_skip_reason_only_when_skipped",
            ),
            models.CheckConstraint(
                condition=~Q(status="sent") | Q(sent_at__isnull=False), name="message_sent_has_time"
            ),
            models.UniqueConstraint(fields=["token"], name="message_token_unique"),
            # Every deferral is one of the claims counted by attempts.
            models.CheckConstraint(
                condition=Q(deferrals__lte=F("attempts")), name="message_deferrals_are_claims"
            ),
        ]
        indexes = [
            models.Index(fields=["campaign", "status"], name="message_campaign_status_idx"),
            # The frequency cap reads each customer's messages claimed in its window: a range on this
            # index, however long the customer's history (it also serves lookups by customer).
            models.Index(fields=["customer", "claimed_at"], name="message_customer_claimed_idx"),
            models.Index(fields=["status"], name="message_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} → {self.customer_id} ({self.status})"


class Offer(models.Model):
    # The message's own index is the unique (message, …) ones; token as on Message.
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="offers", db_index=False)
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="offers")
    rank = models.PositiveSmallIntegerField()
    score = models.FloatField()
    reason = models.CharField(max_length=300)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.SET_NULL, null=True, blank=True)
    token = models.CharField(max_length=32, default=new_token)
    # Where the email's link to the product leads (its page with the campaign's UTM parameters, as sent):
    # the click on the offer's own token goes there, with no tracked-link row of its own. Empty on
    # offers sent before it was kept, whose clicks go through their TrackedLink.
    # A database default too: code of the release before keeps writing offers while this one deploys.
    url = models.URLField(max_length=2000, blank=True, default="", db_default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["message", "rank"]
        constraints = [
            models.UniqueConstraint(fields=["message", "product"], name="offer_once_per_message"),
            models.UniqueConstraint(fields=["message", "rank"], name="offer_rank_unique"),
            models.UniqueConstraint(fields=["token"], name="offer_token_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.product} for message {self.message_id}"


class TrackedLink(models.Model):
    """A link of the marketer's own in a sent email: the click redirect goes only to this stored URL.

    An offer's link and the honeypot need no row: their clicks are recorded on the offer's and the
    message's own tokens (campaigns.events.CLICK_SOURCES)."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="links")
    offer = models.ForeignKey(Offer, on_delete=models.CASCADE, null=True, blank=True, related_name="links")
    token = models.CharField(max_length=32, default=new_token)  # unique: Meta, as on Message
    url = models.URLField(max_length=2000)
    is_honeypot = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["token"], name="trackedlink_token_unique")]

    def __str__(self) -> str:
        return self.url


class Event(models.Model):
    class Kind(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        OPEN = "open", "Opened"
        CLICK = "click", "Clicked"
        ACCEPT = "accept", "Accepted offer"
        UNSUBSCRIBE = "unsubscribe", "Unsubscribed"
        BOUNCE = "bounce", "Bounced"
        COMPLAINT = "complaint", "Complained"
        CONVERSION = "conversion", "Converted"

    # The Message columns an event's first occurrence sets; opens and clicks only when made by a person.
    FIRST_TOUCH = {
        Kind.DELIVERED: ("delivered_at",),
        Kind.OPEN: ("opened_at",),
        Kind.CLICK: ("opened_at", "clicked_at"),
        # Accepting is a person's POST on the offer page the email linked to: it was opened and clicked.
        Kind.ACCEPT: ("opened_at", "clicked_at", "accepted_at"),
    }
    HUMAN_ONLY = (Kind.OPEN, Kind.CLICK)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    # The (message, kind) index serves lookups by message.
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, null=True, blank=True, related_name="events", db_index=False
    )
    # The message's campaign, copied on insert, so a report reads a campaign's events without joining
    # its million messages.
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, null=True, blank=True, related_name="+", db_index=False
    )
    offer = models.ForeignKey(Offer, on_delete=models.CASCADE, null=True, blank=True, related_name="events")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="events")
    occurred_at = models.DateTimeField(db_index=True)
    user_agent = models.CharField(max_length=500, blank=True)
    ip_hash = models.CharField(max_length=64, blank=True)
    is_machine = models.BooleanField(default=False, help_text="Bot, scanner or privacy proxy: not a person.")
    machine_reason = models.CharField(max_length=100, blank=True)
    is_simulated = models.BooleanField(default=False)
    meta = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["offer"], condition=Q(kind="accept"), name="event_one_acceptance_per_offer"
            ),
        ]
        indexes = [
            models.Index(fields=["message", "kind"], name="event_message_kind_idx"),
            models.Index(fields=["customer", "occurred_at"], name="event_customer_time_idx"),
            models.Index(fields=["campaign", "kind", "message"], name="event_campaign_kind_idx"),
            models.Index(
                fields=["campaign"], condition=Q(is_simulated=True), name="event_campaign_simulated_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} at {self.occurred_at:%Y-%m-%d %H:%M}"

    def save(self, *args, **kwargs):
        """Save, copying the message's campaign and moving its first-touch columns back to this event.

        Bulk inserts skip this: they set campaign_id and call campaigns.events.messages_first_touch_refresh.
        """
        if self.message_id is not None and self.campaign_id is None:
            self.campaign_id = self.message.campaign_id
        super().save(*args, **kwargs)
        for field in self.first_touch_fields():
            Message.objects.filter(
                Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__gt": self.occurred_at}), pk=self.message_id
            ).update(**{field: self.occurred_at})

    def first_touch_fields(self) -> tuple[str, ...]:
        if self.message_id is None or (self.is_machine and self.kind in self.HUMAN_ONLY):
            return ()
        return self.FIRST_TOUCH.get(self.kind, ())


class Conversion(models.Model):
    """A later purchase of an offered product within the attribution window (holdouts counted alike)."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="conversions")
    offer = models.ForeignKey(
        Offer, on_delete=models.CASCADE, null=True, blank=True, related_name="conversions"
    )
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="conversions")
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="+")
    revenue = models.DecimalField(max_digits=14, decimal_places=2)
    is_holdout = models.BooleanField(default=False)
    is_simulated = models.BooleanField(default=False)
    attributed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "order", "product"], name="conversion_once"),
        ]

    def __str__(self) -> str:
        return f"conversion {self.order_id} ← message {self.message_id}"
