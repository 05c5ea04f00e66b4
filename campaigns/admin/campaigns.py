"""Admin for templates, campaigns, frequency policies and messages."""

import datetime as dt
import logging
from urllib.parse import urlencode

from celery.schedules import ParseException
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import EmailMultiAlternatives
from django.db.models import Count, Min, Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django_celery_beat.validators import crontab_validator

from customers.admin_utils import EstimatedCountPaginator
from customers.models import Customer, Product

from ..dry_runs import DryRun, campaign_fingerprint, dry_run_begin, dry_run_read
from ..lifecycle import (
    CampaignStateError,
    beat_crontab,
    campaign_cancel,
    campaign_pause,
    campaign_resume,
    campaign_start,
    schedule_sync,
)
from ..models import Campaign, CampaignRun, EmailTemplate, FrequencyPolicy, Message, Offer
from ..recommender import recommend_for_customers
from ..rendering import (
    LAYOUT_DIR,
    RenderError,
    email_render,
    sample_context,
    template_order_problem,
    template_validate,
)
from ..sending import product_url
from ..tasks import campaign_dry_run
from .reports import CampaignReportMixin

log = logging.getLogger(__name__)


def _when(moment) -> str:
    """A moment for a marketer: local date, time and time zone."""
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M %Z}"


def _dry_run(campaign_id: int, token: str) -> DryRun | None:
    """The kept dry run of this token, or None: none given, expired, or the cache cannot be read (the
    callers say so to the marketer)."""
    if not token:
        return None
    try:
        return dry_run_read(campaign_id=campaign_id, token=token)
    except Exception:  # noqa: BLE001 - the cache is down
        log.exception("the dry run of campaign %s could not be read", campaign_id)
        return None


def _layouts() -> list[tuple[str, str]]:
    """The shared layouts in templates/email/: an HTML file with its text twin."""
    folder = LAYOUT_DIR / "email"
    return [
        (f"email/{p.name}", p.stem) for p in sorted(folder.glob("*.html")) if p.with_suffix(".txt").exists()
    ]


# What a template is given (campaigns.sending.compose._context; rendering.sample_context for previews).
TEMPLATE_VARIABLES = (
    "Jinja, in a sandbox; a name it is not given is an error. Given: "
    "customer.first_name, .last_name, .full_name, .email, .country; "
    "offers, a list of up to the campaign's offers per email (at least one), each with .name, .sku, "
    ".price, .currency, .category, .image_url (may be empty), .reason, .score, .url (the tracked link "
    "to the product) and .accept_url; "
    "order, the order that triggered a post-purchase email (.external_id, .placed_at, .total), none in "
    "other campaigns: guard it with {% if order %}; "
    "campaign.name; offer_page_url (all the offers on one page); unsubscribe_url and preferences_url "
    "(the layout's footer has them too). "
    "Prices: {{ offer.price|money(offer.currency) }}. Other http(s) links in the body are tracked as clicks."
)


class EmailTemplateForm(forms.ModelForm):
    layout = forms.ChoiceField(choices=_layouts, help_text="A shared layout from templates/email/.")

    class Meta:
        model = EmailTemplate
        fields = ("name", "layout", "subject", "html", "text")
        widgets = {
            "html": forms.Textarea(attrs={"rows": 18, "cols": 100, "style": "font-family: monospace"}),
            "text": forms.Textarea(attrs={"rows": 10, "cols": 100, "style": "font-family: monospace"}),
        }
        help_texts = {
            "html": TEMPLATE_VARIABLES,
            "text": "The plain-text part: the same variables, not escaped.",
        }

    def clean(self):
        data = super().clean()
        if all(k in data for k in ("subject", "html", "text", "layout")):
            try:
                template_validate(
                    subject=data["subject"],
                    html=data["html"],
                    text=data["text"],
                    layout=data["layout"],
                    context=sample_context(),
                )
            except RenderError as exc:
                raise forms.ValidationError(f"The template does not render: {exc}") from None
        return data


class TestSendForm(forms.Form):
    to = forms.EmailField(label="Send a test to")


def _preview_context(customer: Customer | None) -> dict:
    context = sample_context()
    if customer is None:
        return context
    context["customer"] = {
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "full_name": customer.full_name,
        "email": customer.email,
        "country": customer.country,
    }
    recs = recommend_for_customers(customer_ids=[customer.pk], k=3).get(customer.pk, [])
    from customers.models import Product

    products = Product.objects.in_bulk([r.product_id for r in recs])
    context["offers"] = [
        {
            **context["offers"][0],
            "name": products[r.product_id].name or products[r.product_id].sku,
            "sku": products[r.product_id].sku,
            "price": products[r.product_id].price,
            "currency": products[r.product_id].currency,
            "category": products[r.product_id].category,
            "image_url": products[r.product_id].image_url,
            "reason": r.reason,
            "score": round(r.score, 3),
            # The product's own page: a preview has no stored offer to track or accept.
            "url": product_url(products[r.product_id]),
            "accept_url": product_url(products[r.product_id]),
        }
        for r in recs
    ] or context["offers"]
    return context


@admin.register(EmailTemplate)
class EmailTemplateAdmin(admin.ModelAdmin):
    form = EmailTemplateForm
    list_display = ("name", "subject", "updated_at", "preview_link")
    search_fields = ("name", "subject")
    change_form_template = "admin/campaigns/emailtemplate/change_form.html"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        problem = template_order_problem(subject=obj.subject, html=obj.html, text=obj.text, layout=obj.layout)
        if problem:
            self.message_user(request, f"{obj.name}: saved, but {problem}.", messages.WARNING)

    def get_urls(self):
        return [
            path(
                "<int:pk>/preview/",
                self.admin_site.admin_view(self.preview_view),
                name="campaigns_emailtemplate_preview",
            ),
            path(
                "<int:pk>/test/",
                self.admin_site.admin_view(self.test_view),
                name="campaigns_emailtemplate_test",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="preview")
    def preview_link(self, obj):
        return format_html(
            '<a href="{}">preview</a>', reverse("admin:campaigns_emailtemplate_change", args=[obj.pk])
        )

    @staticmethod
    def _customer(request) -> Customer | None:
        """The customer named in ?customer= by external id (or, failing that, database id), for someone
        who may see customers: Send test mails the render to any address."""
        wanted = request.GET.get("customer", "").strip()
        if not wanted or not request.user.has_perm("customers.view_customer"):
            return None
        customer = Customer.objects.filter(external_id=wanted).first()
        if customer is None and wanted.isdigit():
            customer = Customer.objects.filter(pk=int(wanted)).first()
        return customer

    def _render(self, request, template: EmailTemplate):
        customer = self._customer(request)
        return email_render(
            subject=template.subject,
            html=template.html,
            text=template.text,
            layout=template.layout,
            context=_preview_context(customer),
        )

    def preview_view(self, request, pk):
        """The rendered HTML, served for a sandboxed iframe: no scripts, no same-origin access."""
        template = get_object_or_404(EmailTemplate, pk=pk)
        if not self.has_view_permission(request, template):
            raise PermissionDenied
        if request.method == "POST":
            # "Preview edits": the change form's fields as they are on screen, rendered and never saved;
            # for those who may edit the template, as "Send test".
            if not self.has_change_permission(request, template):
                raise PermissionDenied
            template = EmailTemplate(
                pk=template.pk,
                name=template.name,
                subject=request.POST.get("subject", ""),
                html=request.POST.get("html", ""),
                text=request.POST.get("text", ""),
                layout=request.POST.get("layout", template.layout),
            )
            if template.layout not in dict(_layouts()):
                template.layout = "email/base.html"  # only a shared layout, as the form allows
        try:
            body = self._render(request, template).html
        except RenderError as exc:
            body = format_html("<pre>{}</pre>", str(exc))
        response = HttpResponse(body)
        response["Content-Security-Policy"] = (
            "sandbox; default-src 'none'; img-src * data:; style-src 'unsafe-inline'"
        )
        response["X-Frame-Options"] = "SAMEORIGIN"
        return response

    def test_view(self, request, pk):
        template = get_object_or_404(EmailTemplate, pk=pk)
        if request.method != "POST" or not self.has_change_permission(request, template):
            raise PermissionDenied
        form = TestSendForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Enter a valid email address for the test.")
        else:
            try:
                rendered = self._render(request, template)
                email = EmailMultiAlternatives(
                    f"[TEST] {rendered.subject}",
                    rendered.text,
                    settings.DEFAULT_FROM_EMAIL,
                    [form.cleaned_data["to"]],
                )
                email.attach_alternative(rendered.html, "text/html")
                email.send()
                messages.success(request, f"Test sent to {form.cleaned_data['to']}.")
            except RenderError as exc:
                messages.error(request, f"Not sent: {exc}")
            except Exception as exc:  # noqa: BLE001 - show the mail server's answer to the marketer
                messages.error(request, f"Not sent: {exc}")
        change = reverse("admin:campaigns_emailtemplate_change", args=[pk])
        wanted = request.GET.get("customer", "")
        return redirect(f"{change}?{urlencode({'customer': wanted})}" if wanted else change)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {
            "test_form": TestSendForm(),
            "preview_customer": request.GET.get("customer", "").strip(),
            "preview_found": self._customer(request) is not None,
        }
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})


class CampaignForm(forms.ModelForm):
    class Meta:
        model = Campaign
        fields = (
            "name",
            "kind",
            "segment",
            "template",
            "from_email",
            "offers_per_email",
            "min_offer_score",
            "allowed_categories",
            "send_at",
            "schedule_cron",
            "schedule_timezone",
            "delay_hours",
            "trigger_skus",
            "trigger_categories",
            "trigger_min_value",
            "trigger_lookback_days",
            "holdout_percent",
            "frequency_policy",
            "utm_source",
            "utm_medium",
            "utm_campaign",
        )

    def clean(self):
        data = super().clean()
        if "kind" not in self.fields:  # read only once the campaign has started: the stored one
            data["kind"] = self.instance.kind
        if data.get("kind") == Campaign.Kind.POST_PURCHASE and data.get("send_at"):
            self.add_error(
                "send_at", "A post-purchase campaign is sent after each order, not at a fixed time."
            )
        elif data.get("send_at") and "send_at" in self.changed_data and data["send_at"] < timezone.now():
            self.add_error("send_at", "That time has passed: leave it empty to send when you start it.")
        if data.get("kind") == Campaign.Kind.RECURRING:
            cron = data.get("schedule_cron") or ""
            if len(cron.split()) != 5:
                self.add_error(
                    "schedule_cron", "Give five cron fields, e.g. '0 9 * * 1' for Mondays at 09:00."
                )
            else:
                try:
                    crontab_validator(cron)
                except ValidationError as exc:
                    self.add_error("schedule_cron", f"Not a schedule: {'; '.join(exc.messages)}.")
                else:
                    self._check_beat_reads(cron)
        template = data.get("template")
        if template is not None and data.get("kind") != Campaign.Kind.POST_PURCHASE:
            problem = template_order_problem(
                subject=template.subject, html=template.html, text=template.text, layout=template.layout
            )
            if problem:  # every email of the campaign would be skipped as a render error
                self.add_error("template", f"This template needs a post-purchase campaign: {problem}.")
        score = data.get("min_offer_score")
        if score is not None and not 0 <= score <= 1:
            self.add_error("min_offer_score", "A score is a probability: give a number from 0 to 1.")
        for field, column in (
            ("allowed_categories", "category"),
            ("trigger_categories", "category"),
            ("trigger_skus", "sku"),
        ):
            self._check_names(data, field, column)
        return data

    def _check_beat_reads(self, cron: str) -> None:
        """What the validator above accepts but beat cannot read (Sunday as 7): beat would drop the
        schedule silently and the campaign would never run."""
        try:
            beat_crontab(cron)
        except (ValueError, ParseException) as exc:
            self.add_error("schedule_cron", f"The scheduler cannot read it: {exc} (Sunday is 0, not 7).")

    def _check_names(self, data: dict, field: str, column: str) -> None:
        """A list of names (JSON, e.g. ["Kitchen", "Garden"]) of which each is known: an unknown one would
        silently match nothing, and the campaign would send nothing without saying why."""
        value = data.get(field)
        if value in (None, ""):
            data[field] = []
            return
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.add_error(field, 'Give a JSON list of names, e.g. ["Kitchen", "Garden"], or [] for none.')
            return
        known = Product.objects.filter(**{f"{column}__in": value}).values_list(column, flat=True)
        unknown = sorted(set(value) - set(known))
        if unknown:
            self.add_error(field, f"No product has {', '.join(map(repr, unknown))}.")


@admin.register(Campaign)
class CampaignAdmin(CampaignReportMixin, admin.ModelAdmin):
    form = CampaignForm
    list_display = (
        "name",
        "kind",
        "status",
        "segment",
        "template",
        "started_at",
        "finished_at",
        "report_link",
    )
    list_filter = ("status", "kind")
    search_fields = ("name",)
    actions = ["start", "pause", "resume", "cancel"]
    readonly_fields = ("status", "started_at", "finished_at", "created_by", "message_counts")
    fieldsets = (
        (None, {"fields": ("name", "kind", "status", "segment", "template", "from_email")}),
        ("Offers", {"fields": ("offers_per_email", "min_offer_score", "allowed_categories")}),
        (
            "When",
            {
                "fields": (
                    "send_at",
                    "schedule_cron",
                    "schedule_timezone",
                    "delay_hours",
                    "trigger_skus",
                    "trigger_categories",
                    "trigger_min_value",
                    "trigger_lookback_days",
                )
            },
        ),
        (
            "Measurement and limits",
            {"fields": ("holdout_percent", "frequency_policy", "utm_source", "utm_medium", "utm_campaign")},
        ),
        ("Progress", {"fields": ("message_counts", "started_at", "finished_at", "created_by")}),
    )

    # Once a campaign has sent, who it was for and how it is measured stay as they were: the report is
    # read against them (the holdout split is per campaign). Done and cancelled campaigns are records.
    FROZEN_ONCE_STARTED = ("kind", "segment", "holdout_percent")
    ACTIVE = (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED)

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        # Status alone does not say it: a recurring campaign is "scheduled" again between its runs.
        if obj is None or (obj.status in self.ACTIVE and obj.started_at is None and not obj.runs.exists()):
            return fields
        if obj.status in (Campaign.Status.DONE, Campaign.Status.CANCELLED):
            return (*fields, *CampaignForm.Meta.fields)
        return (*fields, *self.FROZEN_ONCE_STARTED)

    def has_delete_permission(self, request, obj=None):
        # Deleting a campaign deletes its messages, which the frequency caps count and reports read:
        # only one that never sent may go (cancel stops one for good).
        if obj is not None and obj.messages.exclude(status__in=self.UNSENT).exists():
            return False
        return super().has_delete_permission(request, obj)

    UNSENT = (Message.Status.PLANNED, Message.Status.SKIPPED, Message.Status.HOLDOUT)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would not ask has_delete_permission() per campaign
        return actions

    @admin.display(description="messages by status")
    def message_counts(self, obj):
        if obj.pk is None:
            return "—"
        counts = dict(obj.messages.values_list("status").annotate(n=Count("pk")).order_by())
        text = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none yet"
        if counts.get(Message.Status.PLANNED):
            # Planned again because the mail server could not take them: say so, or it looks stuck.
            # deferred_since is cleared once the server is reached: these are in a run of deferrals.
            waiting = obj.messages.filter(status=Message.Status.PLANNED, deferred_since__isnull=False)
            deferred = waiting.aggregate(n=Count("pk"), since=Min("deferred_since"), next=Min("send_after"))
            if deferred["n"]:
                error = waiting.order_by("-claimed_at").values_list("error", flat=True).first()
                now = timezone.now()
                since, next_try = deferred["since"], max(deferred["next"] or now, now)
                give_up = since + dt.timedelta(hours=settings.SEND_DEFER_HOURS)
                text += f". {deferred['n']} waiting because the mail server could not take them, since {_when(since)}"
                if obj.status == Campaign.Status.PAUSED:
                    text += "; they are tried again when the campaign is resumed (the wait starts over)"
                elif give_up <= now:
                    text += f"; next try from {_when(next_try)}, where each one still refused fails"
                else:
                    text += (
                        f"; next try from {_when(next_try)}; if the server still refuses them, the first "
                        f"fail at {_when(give_up)} ({settings.SEND_DEFER_HOURS} hours of waiting)"
                    )
                text += f". Last error: {error}"
        return text

    @admin.display(description="report")
    def report_link(self, obj):
        try:
            url = reverse("admin:campaigns_campaign_report", args=[obj.pk])
        except Exception:  # noqa: BLE001 - reports arrive with the analytics module
            return "—"
        return format_html('<a href="{}">report</a>', url)

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        if change and {"schedule_cron", "schedule_timezone"} & set(form.changed_data):
            schedule_sync(campaign=obj)

    def _act(self, request, queryset, action, verb):
        if not request.user.has_perm("campaigns.send_campaign"):
            raise PermissionDenied
        for campaign in queryset:
            try:
                action(campaign=campaign)
                self.message_user(request, f"{campaign.name}: {verb}.")
            except CampaignStateError as exc:
                self.message_user(request, str(exc), messages.ERROR)

    def get_urls(self):
        return [
            path("start/", self.admin_site.admin_view(self.start_view), name="campaigns_campaign_start"),
            *super().get_urls(),
        ]

    @admin.action(description="Start or schedule sending (after a dry run)")
    def start(self, request, queryset):
        """First each draft's dry run, computed by a task while a page shows its progress (at a million
        recipients it takes longer than a request may); sending starts only from that page's
        confirmation."""
        if not request.user.has_perm("campaigns.send_campaign"):
            raise PermissionDenied
        if request.POST.get("confirm") == "yes":
            self._act(
                request,
                queryset.filter(pk__in=self._dry_run_done(request, queryset)),
                campaign_start,
                "started",
            )
            return None
        runs = []
        try:
            for campaign in queryset.order_by("pk"):
                token = ""
                if campaign.status == Campaign.Status.DRAFT:
                    token = dry_run_begin(campaign_id=campaign.pk)
                    campaign_dry_run.delay(campaign_id=campaign.pk, token=token)
                runs.append(f"{campaign.pk}:{token}")
        except Exception as exc:  # noqa: BLE001 - the cache or the broker is down: nothing was started
            log.exception("the dry run could not be asked for")
            self.message_user(
                request, f"The dry run could not be started ({type(exc).__name__}: {exc}).", messages.ERROR
            )
            return None
        # Shown from here, not after a redirect: where tasks run in the request, the cache is this
        # process's own, and the next request may reach another one. While one runs, the page reloads
        # itself from start_view.
        return self._start_page(request, runs)

    def _dry_run_done(self, request, queryset) -> list[int]:
        """The campaigns whose finished dry run the confirmation carries (run=ID:TOKEN): only those start,
        so a campaign is never started without its figures having been shown."""
        tokens = dict(value.partition(":")[::2] for value in request.POST.getlist("run"))
        done = []
        for campaign in queryset:
            run = _dry_run(campaign.pk, tokens.get(str(campaign.pk), ""))
            if (
                run is not None
                and run.state == DryRun.DONE
                and run.fingerprint == campaign_fingerprint(campaign)
            ):
                done.append(campaign.pk)
            elif run is not None and run.state == DryRun.DONE:
                self.message_user(
                    request,
                    f"{campaign.name}: not started, its settings changed after its dry run. "
                    "Select it and choose Start again.",
                    messages.ERROR,
                )
            else:
                self.message_user(
                    request,
                    f"{campaign.name}: not started, its dry run is not finished or no longer kept. "
                    "Select it and choose Start again.",
                    messages.ERROR,
                )
        return done

    def start_view(self, request):
        """The dry runs the Start action asked for (?run=ID:TOKEN, one per campaign): progress while they
        run (the page reloads itself), then their figures and the confirmation."""
        if not request.user.has_perm("campaigns.send_campaign"):
            raise PermissionDenied
        return self._start_page(request, request.GET.getlist("run")[:100])

    def _start_page(self, request, runs: list[str]):
        previews, seen = [], set()
        for value in runs:
            pk, _, token = value.partition(":")
            campaign = Campaign.objects.filter(pk=pk).first() if pk.isascii() and pk.isdigit() else None
            if campaign is None or campaign.pk in seen:
                continue
            seen.add(campaign.pk)
            run = _dry_run(campaign.pk, token)
            if campaign.status != Campaign.Status.DRAFT:
                note = f"It is {campaign.get_status_display().lower()}: only a draft can be started."
                run = None
            elif run is None:
                note = "This dry run is no longer kept (or cannot be read): select the campaign in the list and choose Start again."
            else:
                note = self._start_note(campaign)
            previews.append((campaign, run, note, f"{campaign.pk}:{token}"))
        running = any(run and run.state == DryRun.RUNNING for _, run, _, _ in previews)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Start sending?",
            "previews": previews,
            "running": running,
            "status_url": f"{reverse('admin:campaigns_campaign_start')}?{urlencode({'run': runs}, doseq=True)}",
            "startable": []
            if running
            else [c for c, run, _, _ in previews if run and run.state == DryRun.DONE],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/campaigns/campaign/start_confirmation.html", context)

    @staticmethod
    def _start_note(campaign: Campaign) -> str:
        if campaign.kind == Campaign.Kind.ONE_OFF and campaign.send_at and campaign.send_at > timezone.now():
            return f"Scheduled for {timezone.localtime(campaign.send_at):%Y-%m-%d %H:%M}; figures as of now."
        if campaign.kind == Campaign.Kind.RECURRING:
            return (
                f"Runs on the schedule {campaign.schedule_cron!r} ({campaign.schedule_timezone}); "
                "figures as of now."
            )
        return ""

    @admin.action(description="Pause")
    def pause(self, request, queryset):
        self._act(request, queryset, campaign_pause, "paused")

    @admin.action(description="Resume")
    def resume(self, request, queryset):
        self._act(request, queryset, campaign_resume, "resumed")

    @admin.action(description="Cancel (planned messages are skipped)")
    def cancel(self, request, queryset):
        """For good, so after a confirmation page that says what each campaign would skip."""
        if not request.user.has_perm("campaigns.send_campaign"):
            raise PermissionDenied
        if request.POST.get("confirm") == "yes":
            self._act(request, queryset, campaign_cancel, "cancelled")
            return None
        planned = Count("messages", filter=Q(messages__status=Message.Status.PLANNED))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Cancel campaigns?",
            "campaigns": [(c, c.planned) for c in queryset.annotate(planned=planned).order_by("pk")],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/campaigns/campaign/cancel_confirmation.html", context)


@admin.register(FrequencyPolicy)
class FrequencyPolicyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "is_default",
        "max_messages",
        "window_days",
        "min_gap_hours",
        "quiet_start",
        "quiet_end",
    )


class OfferInline(admin.TabularInline):
    model = Offer
    extra = 0
    fields = ("rank", "product", "score", "reason", "url", "model_version")
    readonly_fields = fields
    can_delete = False


class WaitingForServerFilter(admin.SimpleListFilter):
    """Messages planned again because the mail server could not take them (a run of deferrals)."""

    title = "mail server"
    parameter_name = "deferred"

    def lookups(self, request, model_admin):
        return [("waiting", "Waiting for the mail server")]

    def queryset(self, request, queryset):
        if self.value() == "waiting":
            return queryset.filter(status=Message.Status.PLANNED, deferred_since__isnull=False)
        return queryset


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "campaign", "customer", "status", "skip_reason", "sent_at", "attempts", "deferrals")
    list_filter = ("status", WaitingForServerFilter, "skip_reason", "campaign")
    list_select_related = ("campaign", "customer")
    search_fields = ("=customer__external_id", "customer__email", "=token")
    raw_id_fields = ("customer", "trigger_order", "run")
    readonly_fields = [f.name for f in Message._meta.fields]
    inlines = [OfferInline]
    paginator = EstimatedCountPaginator
    show_full_result_count = False

    def has_add_permission(self, request):
        return False


@admin.register(CampaignRun)
class CampaignRunAdmin(admin.ModelAdmin):
    list_display = ("campaign", "key", "planned_at", "counts")
    readonly_fields = ("campaign", "key", "planned_at", "finished_at", "counts")

    def has_add_permission(self, request):
        return False
