from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count
from django.utils import timezone
from tqdm import tqdm

from campaigns.caps import CapLedger, policy_default
from campaigns.lifecycle import CampaignStateError, campaign_batches, campaign_finish_if_done, campaign_start
from campaigns.models import Campaign
from campaigns.planning import campaign_audience, holdout_bucket, trigger_orders
from campaigns.recommender import recommend_for_customers
from campaigns.sending import messages_send
from customers.models import Customer, Product


class Command(BaseCommand):
    help = "Run a campaign now from the shell (plan, then send every due message), or --dry-run to preview."

    def add_arguments(self, parser):
        parser.add_argument("campaign", help="campaign name or id")
        parser.add_argument(
            "--dry-run", action="store_true", help="print audience, holdout, caps, sample offers"
        )

    def handle(self, *args, **opts):
        key = opts["campaign"]
        campaign = Campaign.objects.filter(pk=int(key)).first() if key.isdigit() else None
        campaign = campaign or Campaign.objects.filter(name=key).first()
        if campaign is None:
            raise CommandError(f"no campaign named or numbered {key!r}")
        if opts["dry_run"]:
            return self.dry_run(campaign)
        if campaign.status in (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED):
            try:
                campaign_start(campaign=campaign, enqueue=False)
            except CampaignStateError as exc:
                raise CommandError(str(exc)) from None
        campaign.refresh_from_db()
        if campaign.status != Campaign.Status.SENDING:
            raise CommandError(
                f"campaign {campaign.name!r} is {campaign.get_status_display().lower()}; nothing to send"
            )
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

    def dry_run(self, campaign: Campaign) -> None:
        now = timezone.now()
        everyone, mailable = campaign_audience(campaign, now)
        if campaign.kind == Campaign.Kind.POST_PURCHASE:
            orders = trigger_orders(campaign=campaign, now=now).filter(customer__in=everyone)
            ids = list(orders.filter(customer__in=mailable).values_list("customer_id", flat=True).distinct())
            self.stdout.write(
                f"trigger orders in the last {campaign.trigger_lookback_days} days: {orders.count()}"
            )
            audience = len(set(orders.values_list("customer_id", flat=True)))
        else:
            ids = list(mailable.values_list("pk", flat=True))
            audience = everyone.count()
        holdout = [
            c
            for c in ids
            if holdout_bucket(campaign_id=campaign.pk, customer_id=c) < campaign.holdout_percent
        ]
        recipients = sorted(set(ids) - set(holdout))
        ledger = CapLedger(
            policy=campaign.frequency_policy or policy_default(), customer_ids=recipients, now=now
        )
        zones = dict(Customer.objects.filter(pk__in=recipients).values_list("pk", "timezone"))
        capped = sum(
            not ledger.check(customer_id=c, timezone_name=zones.get(c, "UTC")).allowed for c in recipients
        )
        self.stdout.write(f"audience (segment): {audience}")
        self.stdout.write(f"suppressed or without consent: {audience - len(ids)}")
        self.stdout.write(f"holdout ({campaign.holdout_percent}%): {len(holdout)}")
        self.stdout.write(f"capped or in quiet hours now: {capped}")
        self.stdout.write(f"would be sent: {len(recipients) - capped}")
        sample = recipients[:5]
        recs = recommend_for_customers(
            customer_ids=sample,
            k=campaign.offers_per_email,
            categories=campaign.allowed_categories or None,
            min_score=campaign.min_offer_score,
        )
        names = dict(
            Product.objects.filter(pk__in={r.product_id for v in recs.values() for r in v}).values_list(
                "pk", "name"
            )
        )
        emails = dict(Customer.objects.filter(pk__in=sample).values_list("pk", "email"))
        for customer_id in sample:
            self.stdout.write(f"sample offers for {emails.get(customer_id)}:")
            for r in recs.get(customer_id, []) or []:
                self.stdout.write(f"  {r.score:.3f}  {names.get(r.product_id)}  — {r.reason}")
            if not recs.get(customer_id):
                self.stdout.write("  (no offer above the minimum score: would be skipped)")
        self.stdout.write(self.style.WARNING("dry run: nothing was planned or sent"))
