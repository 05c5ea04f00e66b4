"""Admin for recommender model versions: list, inspect, activate."""

from django.contrib import admin, messages
from django.db.models import Count, Max

from ..models import ModelVersion, StoredOffers
from ..recommender.service import model_version_activate


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "trained_at",
        "algorithm",
        "data_start",
        "data_end",
        "validation_recall",
        "is_active",
    ]
    list_filter = ["is_active", "algorithm"]
    fields = [
        "trained_at",
        "data_start",
        "data_end",
        "algorithm",
        "params",
        "metrics",
        "artefact",
        "is_active",
        "stored_offers",
        "notes",
    ]
    # Everything but the notes is what training produced; activation is the admin action's job.
    readonly_fields = [f for f in fields if f != "notes"]
    actions = ["activate"]

    def has_add_permission(self, request):
        return False  # versions come from train_recommender / the nightly task

    @admin.display(description="explore recall@10 (validation)")
    def validation_recall(self, obj):
        value = (obj.metrics or {}).get("validation", {}).get("explore_recall@10")
        return f"{value:.3f}" if isinstance(value, float) else "—"

    @admin.display(description="stored offers")
    def stored_offers(self, obj):
        # The refresh after an activation takes minutes on a large shop: this is its progress.
        stored = StoredOffers.objects.filter(model_version=obj).aggregate(
            n=Count("pk"), last=Max("computed_at")
        )
        if not stored["n"]:
            return "none (scored live when asked)" if obj.is_active else "none"
        return f"{stored['n']:,} customers, last stored {stored['last']:%Y-%m-%d %H:%M:%S %Z}"

    @admin.action(description="Activate the selected version (scoring uses it from now on)")
    def activate(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return
        version = model_version_activate(version=queryset.get())
        self.message_user(
            request,
            f"{version} is now active; every customer's offers are being stored again (see the version's page).",
            messages.SUCCESS,
        )
