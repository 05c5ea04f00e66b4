"""Create or update the Marketer and Campaign sender groups; safe to run again after each deploy.

Marketers edit segments, templates and campaigns and preview them; starting, pausing, resuming and
cancelling a send needs campaigns.send_campaign (the Campaign sender group). Frequency policies and
erasing customers are left to superusers: no group is given those permissions.
"""

from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

ROLES = {
    "Marketer": [
        "campaigns.add_segment",
        "campaigns.change_segment",
        "campaigns.view_segment",
        "campaigns.add_emailtemplate",
        "campaigns.change_emailtemplate",
        "campaigns.view_emailtemplate",
        "campaigns.add_campaign",
        "campaigns.change_campaign",
        "campaigns.view_campaign",
        "campaigns.view_campaignrun",
        "campaigns.view_message",
        "campaigns.view_offer",
        "campaigns.view_frequencypolicy",
        "campaigns.view_modelversion",
        "customers.view_customer",
        "customers.view_order",
        "customers.view_product",
    ],
    "Campaign sender": [
        "campaigns.send_campaign",
        "campaigns.view_campaign",
    ],
}


def roles_setup() -> dict[str, int]:
    """Set each group's permissions to exactly the list above; returns {group: permission count}."""
    result = {}
    with transaction.atomic():
        for name, codes in ROLES.items():
            perms = []
            for code in codes:
                app_label, codename = code.split(".")
                try:
                    perms.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
                except Permission.DoesNotExist:
                    raise CommandError(f"permission {code} does not exist: run migrate first") from None
            group, _ = Group.objects.get_or_create(name=name)
            group.permissions.set(perms)
            result[name] = len(perms)
    return result


class Command(BaseCommand):
    help = "Create or update the Marketer and Campaign sender groups (idempotent)."

    def handle(self, *args, **options):
        for name, count in roles_setup().items():
            self.stdout.write(f"{name}: {count} permissions")
