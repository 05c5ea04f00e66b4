"""Admin for segments: rules as JSON, refused with the offending rule's path, and a live preview."""

import json

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import mark_safe

from campaigns.models import Segment
from campaigns.segments import (
    RFM_BANDS,
    SegmentError,
    segment_audience,
    segment_preview,
    segment_rules_validate,
)

SAMPLE_SIZE = 10

RULES_EXAMPLE = {
    "op": "and",
    "rules": [
        {"field": "marketing_consent", "op": "=", "value": True},
        {"field": "country", "op": "in", "value": ["United Kingdom", "Ireland"]},
        {
            "op": "or",
            "rules": [
                {"field": "bought", "op": "within", "value": {"category": "Kitchen", "days": 90}},
                {"field": "total_spent", "op": ">=", "value": 500},
            ],
        },
        {"field": "bought", "op": "not within", "value": {"sku": "85123A", "days": 365}},
    ],
}

RULES_HELP = mark_safe(
    'A group <code>{"op": "and" | "or", "rules": [...]}</code> of rules '
    '<code>{"field": ..., "op": ..., "value": ...}</code> or nested groups; <code>{}</code> matches '
    "every customer.<br>"
    "<b>orders_count</b>, <b>total_spent</b>, <b>days_since_last_order</b>: "
    "<code>= != &gt; &gt;= &lt; &lt;=</code> a number · "
    '<b>last_order_at</b>: <code>before</code> / <code>after</code> "YYYY-MM-DD" · '
    "<b>country</b>: <code>in</code> / <code>not in</code> a list, any case · "
    "<b>marketing_consent</b>: <code>=</code> true / false · "
    f"<b>rfm_band</b>: <code>in</code> / <code>not in</code> a list of {', '.join(RFM_BANDS)} · "
    "<b>bought</b>: <code>within</code> / <code>not within</code> "
    '<code>{"sku": "..."}</code> or <code>{"category": "..."}</code> plus <code>"days": N</code> '
    "(placed orders only).<br>Example:"
    f"<pre>{escape(json.dumps(RULES_EXAMPLE, indent=2))}</pre>"
)


class RulesField(forms.JSONField):
    """Shows the rules indented, and says where the JSON is broken instead of just "invalid"."""

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, cls=self.encoder)

    def to_python(self, value):
        try:
            return super().to_python(value)
        except ValidationError:
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValidationError(
                    "Not valid JSON: %(msg)s at line %(line)s, column %(col)s.",
                    code="invalid",
                    params={"msg": exc.msg, "line": exc.lineno, "col": exc.colno},
                ) from exc
            raise


class SegmentForm(forms.ModelForm):
    class Meta:
        model = Segment
        fields = ("name", "description", "rules")
        field_classes = {"rules": RulesField}
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "rules": forms.Textarea(attrs={"rows": 18, "cols": 90, "style": "font-family: monospace"}),
        }
        help_texts = {"rules": RULES_HELP}

    def clean_rules(self):
        rules = self.cleaned_data.get("rules")
        if rules in (None, ""):
            return {}
        try:
            segment_rules_validate(rules=rules)
        except SegmentError as exc:
            raise ValidationError(str(exc), code="invalid_rule") from exc
        return rules


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentForm
    list_display = ("name", "updated_at")
    search_fields = ("name",)
    readonly_fields = ("live_count", "sample_table", "created_at", "updated_at")

    def get_fieldsets(self, request, obj=None):
        fieldsets = [(None, {"fields": ("name", "description", "rules")})]
        if obj is not None and obj.pk:
            # Counts run only here, on one segment's change page, never on the list.
            fieldsets += [
                ("Who it matches now", {"fields": ("live_count", "sample_table")}),
                ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
            ]
        return fieldsets

    def _preview(self, obj: Segment) -> dict:
        # Both read-only fields render from one preview, computed once per page.
        if getattr(obj, "_admin_preview", None) is None:
            now = timezone.now()
            try:
                preview = segment_preview(segment=obj, sample=SAMPLE_SIZE, now=now)
                preview["mailable"] = segment_audience(segment=obj, now=now).count()
            except SegmentError as exc:
                preview = {"error": str(exc)}
            obj._admin_preview = preview
        return obj._admin_preview

    @admin.display(description="live count")
    def live_count(self, obj: Segment):
        preview = self._preview(obj)
        if "error" in preview:
            return format_html(
                '<span class="errornote">The saved rules are invalid: {}</span>', preview["error"]
            )
        return format_html(
            "<strong>{}</strong> customer{} match; <strong>{}</strong> can be mailed "
            "(with an email address, consenting, not suppressed).",
            f"{preview['count']:,}",
            "" if preview["count"] == 1 else "s",
            f"{preview['mailable']:,}",
        )

    @admin.display(description=f"sample ({SAMPLE_SIZE})")
    def sample_table(self, obj: Segment):
        preview = self._preview(obj)
        if "error" in preview:
            return "—"
        if not preview["sample"]:
            return "No customer matches."
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:customers_customer_change", args=[customer.pk]),
                    customer.external_id,
                    customer.email or "—",
                    customer.orders_count,
                    customer.total_spent,
                    f"{customer.last_order_at:%Y-%m-%d}" if customer.last_order_at else "—",
                    customer.rfm_band,
                )
                for customer in preview["sample"]
            ),
        )
        return format_html(
            "<table><thead><tr><th>External id</th><th>Email</th><th>Orders</th><th>Spent</th>"
            "<th>Last order</th><th>RFM band</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )
