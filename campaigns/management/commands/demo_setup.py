import secrets

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from campaigns.demo import demo_campaign_ensure, demo_events_simulate, demo_send_backdate
from campaigns.models import Message, ModelVersion


class Command(BaseCommand):
    help = "Prepare the demo: admin login, roles, a trained model, and the demo campaign run with simulated events."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, **opts):
        if "setup_roles" in _commands():
            call_command("setup_roles", verbosity=0)
        if "train_recommender" in _commands() and not ModelVersion.objects.filter(is_active=True).exists():
            self.stdout.write("training the recommender on the demo shop…")
            call_command("train_recommender", "--activate", verbosity=opts["verbosity"])
            latest = ModelVersion.objects.first()
            if latest and not ModelVersion.objects.filter(is_active=True).exists():
                ModelVersion.objects.filter(pk=latest.pk).update(is_active=True)
        campaign = demo_campaign_ensure()
        if not campaign.messages.filter(status=Message.Status.SENT).exists():
            call_command("run_campaign", str(campaign.pk), verbosity=opts["verbosity"])
            demo_send_backdate(campaign=campaign)  # so that its simulated month has already happened
            counts = demo_events_simulate(campaign=campaign)
            self.stdout.write(f"simulated recipients' behaviour: {counts}")
            # The stored offers were scored before the demo's orders moved back and its recipients bought:
            # the next campaign a marketer sends would offer what they bought since, on dates now wrong.
            call_command("refresh_offers", verbosity=0)
        user_model = get_user_model()
        password = secrets.token_urlsafe(9)
        user, _ = user_model.objects.get_or_create(
            username=opts["username"], defaults={"email": "admin@shop.example"}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(
            self.style.SUCCESS(
                f"\nAdmin: http://127.0.0.1:8000/admin/  user {user.username}  password {password}\n"
                f"Demo campaign: {campaign.name!r} (emails are in var/outbox/)\n"
            )
        )


def _commands() -> set[str]:
    from django.core.management import get_commands

    return set(get_commands())
