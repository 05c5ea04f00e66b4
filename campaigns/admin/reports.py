"""The campaign report and CSV export views, mixed into CampaignAdmin, and logging of its send actions."""

from __future__ import annotations

import csv
import functools

from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Exists, OuterRef, Value, When
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path

from ..models import Campaign, Conversion, Event, Message, Offer
from ..reports import campaign_report

SEND_ACTIONS = ("start", "pause", "resume", "cancel")
SEND_PERMISSION = "campaigns.send_campaign"

EXPORTS = {
    "messages": (
        ("message_id", "pk"),
        ("customer", "customer__external_id"),
        ("run", "run__key"),
        ("status", "status"),
        ("skip_reason", "skip_reason"),
        ("created_at", "created_at"),
        ("sent_at", "sent_at"),
        ("attempts", "attempts"),
        ("simulated", "is_simulated"),
    ),
    "offers": (
        ("offer_id", "pk"),
        ("message_id", "message_id"),
        ("customer", "message__customer__external_id"),
        ("message_status", "message__status"),
        ("rank", "rank"),
        ("sku", "product__sku"),
        ("product", "product__name"),
        ("score", "score"),
        ("model_version", "model_version_id"),
        ("reason", "reason"),
        ("accepted", "accepted"),
    ),
    "conversions": (
        ("conversion_id", "pk"),
        ("message_id", "message_id"),
        ("customer", "message__customer__external_id"),
        ("group", "group"),
        ("offer_id", "offer_id"),
        ("order", "order__external_id"),
        ("placed_at", "order__placed_at"),
        ("sku", "product__sku"),
        ("revenue", "revenue"),
        ("simulated", "is_simulated"),
    ),
}


class _Echo:
    def write(self, value):
        return value


def export_rows(*, campaign: Campaign, part: str):
    """Header then one tuple per row of the part, read in chunks from the database."""
    if part == "messages":
        rows = Message.objects.filter(campaign=campaign).order_by("pk")
    elif part == "offers":
        accepted = Event.objects.filter(offer=OuterRef("pk"), kind=Event.Kind.ACCEPT)
        rows = (
            Offer.objects.filter(message__campaign=campaign)
            .annotate(accepted=Exists(accepted))
            .order_by("pk")
        )
    else:
        rows = Conversion.objects.filter(message__campaign=campaign).order_by("pk")
    columns = EXPORTS[part]
    if part == "conversions":
        rows = rows.annotate(
            group=Case(When(is_holdout=True, then=Value("holdout")), default=Value("recipient"))
        )
    yield tuple(name for name, _ in columns)
    yield from rows.values_list(*(field for _, field in columns)).iterator(chunk_size=5000)


def _logged(func, description: str):
    """Run a send action and record each campaign whose status it changed as a LogEntry."""

    @functools.wraps(func)
    def action(modeladmin, request, queryset):
        before = dict(queryset.values_list("pk", "status"))
        result = func(modeladmin, request, queryset)
        for campaign in Campaign.objects.filter(pk__in=before):
            if campaign.status != before[campaign.pk]:
                modeladmin.log_change(
                    request,
                    campaign,
                    f"{description}: {before[campaign.pk]} → {campaign.status}",
                )
        return result

    return action


class CampaignReportMixin:
    """Adds /<pk>/report/ and /<pk>/export.csv to CampaignAdmin; send actions need send_campaign."""

    def get_urls(self):
        return [
            path(
                "<int:pk>/report/",
                self.admin_site.admin_view(self.report_view),
                name="campaigns_campaign_report",
            ),
            path(
                "<int:pk>/export.csv",
                self.admin_site.admin_view(self.export_view),
                name="campaigns_campaign_export",
            ),
            *super().get_urls(),
        ]

    def get_actions(self, request):
        actions = super().get_actions(request)
        allowed = request.user.has_perm(SEND_PERMISSION)
        for name in SEND_ACTIONS:
            if name not in actions:
                continue
            if not allowed:
                del actions[name]
                continue
            func, action_name, description = actions[name]
            actions[name] = (_logged(func, str(description)), action_name, description)
        return actions

    def _campaign(self, request, pk) -> Campaign:
        campaign = get_object_or_404(Campaign, pk=pk)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        return campaign

    def report_view(self, request, pk):
        campaign = self._campaign(request, pk)
        report = campaign_report(campaign=campaign, cached=True, refresh=bool(request.GET.get("refresh")))
        counts = report["counts"]
        steps = ("audience", "sent", "delivered", "opened", "clicked", "accepted", "converted")
        charts = {
            "daily": report["daily"],
            "funnel": {"labels": list(steps), "values": [counts[s] for s in steps]},
            "products": {
                "labels": [p["name"] for p in report["top_products"]],
                "accepted": [p["accepted"] for p in report["top_products"]],
                "revenue": [p["revenue"] for p in report["top_products"]],
            },
        }
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": campaign,
            "title": f"Report: {campaign.name}",
            "report": report,
            "charts": charts,
            "history": LogEntry.objects.filter(
                content_type__app_label="campaigns",
                content_type__model="campaign",
                object_id=str(campaign.pk),
                action_flag=CHANGE,
            ).select_related("user")[:20],
        }
        return TemplateResponse(request, "admin/campaigns/campaign/report.html", context)

    def export_view(self, request, pk):
        campaign = self._campaign(request, pk)
        part = request.GET.get("part", "messages")
        if part not in EXPORTS:
            part = "messages"
        writer = csv.writer(_Echo())
        response = StreamingHttpResponse(
            (writer.writerow(row) for row in export_rows(campaign=campaign, part=part)),
            content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="campaign-{campaign.pk}-{part}.csv"'
        return response
