import functools
import zoneinfo

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def validate_time_zone(value: str) -> None:
    # Sending falls back to UTC for an unknown zone: quiet hours would fall at the wrong time.
    if value not in _time_zones():
        raise ValidationError(f"{value!r} is not an IANA time zone (e.g. Europe/London, America/New_York).")


class CustomerQuerySet(models.QuerySet):
    def mailable(self, now=None):
        """Consenting, not suppressed, not pausing, with an address: who marketing email may reach."""
        now = now or timezone.now()
        return self.filter(
            Q(paused_until__isnull=True) | Q(paused_until__lte=now),
            marketing_consent=True,
            suppressed_reason="",
        ).exclude(email="")


class Customer(models.Model):
    class Suppression(models.TextChoices):
        NONE = "", "Not suppressed"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        BOUNCED = "bounced", "Hard bounce"
        COMPLAINED = "complained", "Spam complaint"
        ERASED = "erased", "Erased on request"
        MANUAL = "manual", "Suppressed by staff"

    external_id = models.CharField(max_length=64, unique=True, help_text="The shop's customer id.")
    email = models.EmailField(blank=True, db_index=True)
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    country = models.CharField(max_length=64, blank=True, db_index=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    marketing_consent = models.BooleanField(default=False)
    consent_at = models.DateTimeField(null=True, blank=True)
    consent_source = models.CharField(max_length=100, blank=True)
    suppressed_reason = models.CharField(
        max_length=16, choices=Suppression.choices, blank=True, default=Suppression.NONE
    )
    suppressed_at = models.DateTimeField(null=True, blank=True)
    paused_until = models.DateTimeField(
        null=True, blank=True, help_text="The customer asked for a break from cross-sell emails until then."
    )
    # Lifetime figures kept by customer_stats_refresh() after each import, so list pages and segments
    # read a column instead of aggregating millions of order rows.
    orders_count = models.PositiveIntegerField(default=0)
    total_spent = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    first_order_at = models.DateTimeField(null=True, blank=True)
    last_order_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CustomerQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(suppressed_reason="", suppressed_at__isnull=True)
                | (~Q(suppressed_reason="") & Q(suppressed_at__isnull=False)),
                name="customer_suppression_has_time",
            ),
            models.CheckConstraint(
                condition=Q(marketing_consent=False) | Q(consent_at__isnull=False),
                name="customer_consent_has_time",
            ),
        ]
        indexes = [
            # The mailable audience: consenting and not suppressed.
            models.Index(
                fields=["id"],
                name="customer_mailable_idx",
                condition=Q(marketing_consent=True, suppressed_reason=""),
            ),
            models.Index(fields=["total_spent"], name="customer_total_spent_idx"),
            # Prefix search on addresses (the admin's search box); PostgreSQL needs the pattern opclass.
            models.Index(
                fields=["email"], name="customer_email_prefix_idx", opclasses=["varchar_pattern_ops"]
            ),
        ]

    def __str__(self) -> str:
        return self.email or f"customer {self.external_id}"

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def is_mailable(self) -> bool:
        paused = self.paused_until is not None and self.paused_until > timezone.now()
        return bool(self.email) and self.marketing_consent and not self.suppressed_reason and not paused

    @property
    def average_order_value(self):
        return self.total_spent / self.orders_count if self.orders_count else None


class Product(models.Model):
    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=255, blank=True)
    category = models.CharField(max_length=100, blank=True, db_index=True)
    price = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True, default="")
    active = models.BooleanField(default=True)
    product_url = models.URLField(max_length=500, blank=True)
    image_url = models.URLField(max_length=500, blank=True)
    complements = models.ManyToManyField(
        "self",
        symmetrical=False,
        blank=True,
        related_name="complement_of",
        help_text="Add-ons a marketer knows go with this product; the recommender always considers them.",
    )
    repurchasable = models.BooleanField(
        default=False, help_text="A consumable: may be offered again to customers who bought it."
    )
    # Sales figures kept by product_stats_refresh() after imports (summing millions of lines per page
    # view is what made the product list slow).
    units_sold = models.BigIntegerField(db_default=0)  # a database default: bulk COPYs may omit it
    revenue = models.DecimalField(max_digits=16, decimal_places=2, db_default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(price__isnull=True) | Q(price__gte=0), name="product_price_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name or self.sku} ({self.sku})"


class Order(models.Model):
    class Status(models.TextChoices):
        PLACED = "placed", "Placed"
        CANCELLED = "cancelled", "Cancelled"
        RETURNED = "returned", "Returned"

    class Channel(models.TextChoices):
        WEB = "web", "Web shop"
        STORE = "store", "Store"
        PHONE = "phone", "Phone"
        BRANCH = "branch", "Branch"
        APP = "app", "App"
        IMPORT = "import", "Imported"

    external_id = models.CharField(max_length=64, unique=True)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    placed_at = models.DateTimeField(db_index=True)
    total = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, blank=True, default="")
    channel = models.CharField(max_length=16, choices=Channel.choices, default=Channel.IMPORT)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PLACED)
    # Hash of the order's lines as last imported: a re-import of an unchanged order is skipped.
    content_hash = models.CharField(max_length=40, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["customer", "placed_at"], name="order_customer_placed_idx")]

    def __str__(self) -> str:
        return f"order {self.external_id}"


class OrderLine(models.Model):
    # No single-column indexes: the unique (order, line_no) and the (product, order) index cover those
    # lookups, and every extra index slows the bulk COPY of millions of lines.
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines", db_index=False)
    line_no = models.PositiveIntegerField()
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="order_lines", db_index=False)
    # Always positive: a return is an order with status "returned", not a negative line.
    quantity = models.IntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["order", "line_no"], name="orderline_unique_line_no"),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="orderline_quantity_gt_0"),
            models.CheckConstraint(condition=Q(unit_price__gte=0), name="orderline_unit_price_gte_0"),
        ]
        indexes = [models.Index(fields=["product", "order"], name="orderline_product_order_idx")]

    def __str__(self) -> str:
        return f"{self.quantity} × {self.product_id}"

    @property
    def amount(self):
        return self.quantity * self.unit_price


class ImportRun(models.Model):
    """One import of a file: its status and summary, shown in the admin while it runs and after."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed (nothing written)"

    kind = models.CharField(max_length=16, default="orders")
    filename = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    rows_read = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True)
    errors = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.kind} import of {self.filename} ({self.status})"


class SuppressedAddress(models.Model):
    """An erased customer's address, kept only as a hash, so a later import of it is still not mailed."""

    email_hash = models.CharField(max_length=64, unique=True, help_text="sha256 of the lower-cased address")
    reason = models.CharField(max_length=16, choices=Customer.Suppression.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.email_hash[:12]}… ({self.reason})"
