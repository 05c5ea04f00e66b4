from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count
from django.utils import timezone
from tqdm import tqdm

from campaigns.lifecycle import (
    CampaignStateError,
    campaign_batches,
    campaign_finish_if_done,
    campaign_start,
    recurring_run,
)
from campaigns.models import Campaign
from campaigns.planning import campaign_preview
from campaigns.sending import messages_send


class Command(BaseCommand):
    help = "Run a campaign now from the shell (plan, then send every due message), or --dry-run to preview."

    def add_arguments(self, parser):
        parser.add_argument("campaign", help="campaign name or id")
        parser.add_argument(
            "--dry-run", action="store_true", help="print audience, holdout, caps, sample offers"
        )
        parser.add_argument(
            "--now",
            action="store_true",
            help="a one-off scheduled for later: send it now (its send time becomes now); a recurring "
            "campaign: plan and send its latest scheduled run now, if it has not run",
        )

    def handle(self, *args, **opts):
        key = opts["campaign"]
        campaign = Campaign.objects.filter(pk=int(key)).first() if key.isdigit() else None
        campaign = campaign or Campaign.objects.filter(name=key).first()
        if campaign is None:
            raise CommandError(f"no campaign named or numbered {key!r}")
        if opts["dry_run"]:
            return self.dry_run(campaign)
        now = timezone.now()
        later = campaign.kind == Campaign.Kind.ONE_OFF and campaign.send_at and campaign.send_at > now
        if later and opts["now"] and campaign.status in (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED):
            Campaign.objects.filter(pk=campaign.pk).update(send_at=now)
            campaign.send_at = now
        if campaign.status in (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED):
            try:
                if campaign.status == Campaign.Status.DRAFT or campaign.kind != Campaign.Kind.RECURRING:
                    campaign_start(campaign=campaign, enqueue=False)  # a recurring one: its schedule
                if campaign.kind == Campaign.Kind.RECURRING and opts["now"]:
                    recurring_run(campaign=campaign, now=now)
            except CampaignStateError as exc:
                raise CommandError(str(exc)) from None
        campaign.refresh_from_db()
        if campaign.status != Campaign.Status.SENDING:
            raise CommandError(self._not_sending(campaign))
        batches = campaign_batches(campaign=campaign)
        totals: dict[str, int] = {}
        with tqdm(total=sum(map(len, batches)), unit="msg", disable=opts["verbosity"] == 0) as bar:
            for ids in batches:
                for name, n in messages_send(message_ids=ids).items():
                    totals[name] = totals.get(name, 0) + n
                bar.update(len(ids))
        campaign_finish_if_done(campaign=campaign)
        by_status = dict(campaign.messages.values_list("status").annotate(n=Count("pk")).order_by())
        self.stdout.write(f"this run: {totals or 'nothing due'}")
        self.stdout.write(f"campaign messages by status: {by_status}")

    @staticmethod
    def _not_sending(campaign: Campaign) -> str:
        if campaign.status == Campaign.Status.SCHEDULED and campaign.kind == Campaign.Kind.RECURRING:
            return (
                f"campaign {campaign.name!r} runs on its schedule ({campaign.schedule_cron!r}, "
                f"{campaign.schedule_timezone}); --now runs its latest scheduled run now"
            )
        if campaign.status == Campaign.Status.SCHEDULED and campaign.send_at:
            return (
                f"campaign {campaign.name!r} is scheduled for "
                f"{timezone.localtime(campaign.send_at):%Y-%m-%d %H:%M %Z}; --now sends it now"
            )
        return f"campaign {campaign.name!r} is {campaign.get_status_display().lower()}; nothing to send"

    def dry_run(self, campaign: Campaign) -> None:
        preview = campaign_preview(campaign=campaign)
        if preview.trigger_orders is not None:
            self.stdout.write(
                f"trigger orders in the last {campaign.trigger_lookback_days} days: {preview.trigger_orders}"
            )
        self.stdout.write(f"audience (segment): {preview.audience}")
        self.stdout.write(f"suppressed or without consent: {preview.suppressed}")
        self.stdout.write(f"holdout ({campaign.holdout_percent}%): {preview.holdout}")
        about = "about " if preview.capped_sampled else ""
        sampled = f" (estimated from {preview.capped_sampled} recipients)" if preview.capped_sampled else ""
        self.stdout.write(f"capped or in quiet hours now: {about}{preview.capped}{sampled}")
        self.stdout.write(f"would be sent: {about}{preview.would_send}")
        for email, offers in preview.samples:
            self.stdout.write(f"sample offers for {email}:")
            for score, name, reason in offers:
                self.stdout.write(f"  {score:.3f}  {name}  — {reason}")
            if not offers:
                self.stdout.write("  (no offer above the minimum score: would be skipped)")
        self.stdout.write(self.style.WARNING("dry run: nothing was planned or sent"))
