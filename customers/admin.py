import secrets
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.files.storage import FileSystemStorage
from django.db import transaction
from django.db.models import Q
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from .admin_utils import EstimatedCountPaginator
from .importing import product_stats_refresh
from .models import Customer, ImportRun, Order, OrderLine, Product
from .privacy import CustomerPrivacyAdminMixin
from .selectors import customer_timeline


class SuppressedFilter(admin.SimpleListFilter):
    title = "suppressed"
    parameter_name = "suppressed"

    def lookups(self, request, model_admin):
        return [
            ("no", "Not suppressed"),
            ("yes", "Suppressed (any reason)"),
            *Customer.Suppression.choices[1:],
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "no":
            return queryset.filter(suppressed_reason="")
        if value == "yes":
            return queryset.exclude(suppressed_reason="")
        if value:
            return queryset.filter(suppressed_reason=value)
        return queryset


@admin.register(Customer)
class CustomerAdmin(CustomerPrivacyAdminMixin, admin.ModelAdmin):
    list_display = (
        "external_id",
        "email",
        "full_name",
        "country",
        "marketing_consent",
        "suppressed_reason",
        "orders_count",
        "total_spent",
        "last_order_at",
    )
    list_filter = ("marketing_consent", SuppressedFilter, "country")
    search_fields = ("=external_id", "email", "first_name", "last_name")
    search_help_text = "An email address (or its start) or a customer id; other words search names by prefix."
    readonly_fields = (
        "orders_count",
        "total_spent",
        "first_order_at",
        "last_order_at",
        "consent_at",
        "consent_source",
        "suppressed_at",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("external_id", "email", "first_name", "last_name", "country", "timezone")}),
        (
            "Consent and suppression",
            {
                "fields": (
                    "marketing_consent",
                    "consent_at",
                    "consent_source",
                    "suppressed_reason",
                    "suppressed_at",
                ),
            },
        ),
        ("Lifetime", {"fields": ("orders_count", "total_spent", "first_order_at", "last_order_at")}),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50
    change_form_template = "admin/customers/customer/change_form.html"

    @admin.display(description="name")
    def full_name(self, obj):
        return obj.full_name

    def get_search_results(self, request, queryset, search_term):
        # At a million customers a substring search over four columns scans the table: an address or
        # an id is looked up by its index, and only other words search names (by prefix).
        term = search_term.strip()
        if not term:
            return queryset, False
        if "@" in term:
            return queryset.filter(email__startswith=term.lower()), False
        by_id = queryset.filter(external_id=term)
        if by_id.exists():
            return by_id, False
        names = Q()
        for word in term.split():
            names &= Q(first_name__istartswith=word) | Q(last_name__istartswith=word)
        return queryset.filter(names), False

    def save_model(self, request, obj, form, change):
        obj.email = obj.email.strip().lower()  # imports store addresses lower-cased; search relies on it
        now = timezone.now()
        if "marketing_consent" in form.changed_data:
            obj.consent_at, obj.consent_source = now, f"admin by {request.user}"[:100]
        if "suppressed_reason" in form.changed_data:
            obj.suppressed_at = now if obj.suppressed_reason else None
        super().save_model(request, obj, form, change)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        customer = self.get_object(request, object_id)
        if customer is not None:
            extra_context["timeline"] = customer_timeline(customer=customer)
            from campaigns.reports import customer_story  # campaigns depends on customers, not back

            extra_context["story"] = customer_story(customer=customer)
        return super().change_view(request, object_id, form_url, extra_context)


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    raw_id_fields = ("product",)
    fields = ("line_no", "product", "quantity", "unit_price")


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("external_id", "customer", "placed_at", "total", "currency", "status", "channel")
    list_filter = ("status", "channel")
    search_fields = ("=external_id", "=customer__external_id", "customer__email")
    list_select_related = ("customer",)
    raw_id_fields = ("customer",)
    inlines = [OrderLineInline]
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    readonly_fields = ("content_hash", "created_at")


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "category", "price", "active", "repurchasable", "units_sold", "revenue")
    list_filter = ("active", "repurchasable", "category")
    search_fields = ("=sku", "name")
    filter_horizontal = ("complements",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    readonly_fields = ("units_sold", "revenue", "created_at", "updated_at")
    actions = ["recompute_sales"]

    def get_exclude(self, request, obj=None):
        # A new product has no sales or timestamps yet (and the admin cannot show a database default).
        return self.readonly_fields if obj is None else super().get_exclude(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    @admin.action(description="Recompute units sold and revenue")
    def recompute_sales(self, request, queryset):
        product_stats_refresh(product_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, "Sales figures recomputed from placed orders.")


class UploadForm(forms.Form):
    orders = forms.FileField(help_text="Orders CSV (.csv or .csv.gz), one row per order line.")
    customers = forms.FileField(required=False, help_text="Optional customers CSV.")
    products = forms.FileField(required=False, help_text="Optional products CSV.")
    skip_invalid = forms.BooleanField(
        required=False,
        help_text="Write the valid rows and report the invalid ones (default: refuse the file).",
    )


@admin.register(ImportRun)
class ImportRunAdmin(admin.ModelAdmin):
    list_display = ("filename", "kind", "status", "rows_read", "problem", "started_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = (
        "kind",
        "filename",
        "status",
        "rows_read",
        "summary_display",
        "errors_display",
        "started_at",
        "finished_at",
    )
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the record of an import: shown, never edited (no Save buttons)

    @admin.display(description="problem")
    def problem(self, run: ImportRun) -> str:
        """Why a run failed, in the list itself: its first error (file, line, column, reason)."""
        if not run.errors:
            return ""
        more = len(run.errors) - 1
        return run.errors[0][:300] + (f" (and {more} more)" if more else "")

    @admin.display(description="summary")
    def summary_display(self, run: ImportRun):
        rows = []
        for key, value in run.summary.items():
            if key == "files":  # where the upload was stored on the server: its name is what matters
                value = ", ".join(f"{kind}: {Path(stored).name}" for kind, stored in value.items())
            rows.append((key.replace("_", " "), value))
        return format_html_join(mark_safe("<br>"), "{}: {}", rows) or "—"

    @admin.display(description="errors")
    def errors_display(self, run: ImportRun):
        if not run.errors:
            return "—"
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((e,) for e in run.errors)))

    def get_urls(self):
        return [
            path("upload/", self.admin_site.admin_view(self.upload_view), name="customers_importrun_upload"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "upload_url": reverse("admin:customers_importrun_upload")}
        return super().changelist_view(request, extra_context)

    def upload_view(self, request):
        from .tasks import import_files

        if not request.user.has_perm("customers.add_order"):
            messages.error(request, "You may not import orders.")
            return redirect("admin:customers_importrun_changelist")
        form = UploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            storage = FileSystemStorage(location=settings.MEDIA_ROOT / "imports")
            folder = secrets.token_hex(8)  # a folder per upload: errors name the file as it was uploaded
            stored = {
                key: storage.path(storage.save(f"{folder}/{f.name}", f))
                for key in ("orders", "customers", "products")
                if (f := form.cleaned_data.get(key))
            }
            run = ImportRun.objects.create(
                filename=form.cleaned_data["orders"].name, summary={"files": stored}
            )
            skip = form.cleaned_data["skip_invalid"]
            transaction.on_commit(lambda: import_files.delay(import_run_id=run.pk, skip_invalid=skip))
            messages.info(request, f"Import of {run.filename} started; its status is below.")
            return redirect("admin:customers_importrun_changelist")
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "title": "Import orders",
            "opts": self.model._meta,
        }
        return render(request, "admin/customers/importrun/upload.html", context)
