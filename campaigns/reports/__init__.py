"""What a campaign earned: funnel, rates, revenue, CLV and uplift over the holdout, all from SQL aggregates.

Every figure is one or a few aggregate queries over a *scope* of messages (one campaign, or every message
of the last 90 days); nothing loops over messages in Python. Definitions (also printed on the report):

- audience: every message planned for the scope (sent, failed, skipped, holdout, …).
- recipients (sent): messages with status ``sent``; ``uncertain`` ones are not counted.
- delivered: sent minus messages with a bounce event; when an ESP reports ``delivered`` events, the sent
  messages with a delivered event and no bounce.
- opened / clicked by people: distinct sent messages with a non-machine open or click event (a human
  click implies an open); bots and privacy proxies (``is_machine``) are left out.
- accepted: distinct sent messages with an accept event.
- converted: distinct sent messages with a Conversion on one of their offers (offer not null).
- holdout: messages with status ``holdout`` (never shown offers).
- uplift compares both groups on the same measure, any placed order within the attribution window after
  the email (sent_at; created_at for the holdout): offer-attributed conversions exist only for
  recipients, so comparing them with the holdout's purchases would understate the campaign.
- uplift on purchase rate: p(recipients) − p(holdout), 95% Wald interval (normal approximation for the
  difference of two proportions).
- uplift on revenue per member: difference of means, Welch 95% interval (t with Welch–Satterthwaite
  degrees of freedom) from sums and sums of squares of per-member window revenue; no purchase counts as 0.
- Either uplift is "not significant yet" when a group has fewer than 30 members or the interval
  includes 0.
- AOV and cross-sell ratio: placed orders of the group's customers within the attribution window after
  the message (sent_at for recipients, created_at for the holdout); cross-sell ratio = distinct products
  per order − 1 (additional products per order).
- CLV, historical: mean total_spent of the recipients' customers. Predictive: average order value ×
  purchases per year × expected lifetime in years, where purchases per year = orders in the last 365 days
  per customer active in them, and lifetime = 1 / annual churn (capped at 10 years). Churn is the shop's:
  of all customers with an order in the year before last, the share with none in the last 365 days (a
  group chosen for a recent purchase would show none); "now" is the latest order in the data.
"""

from .queries import attribution_window, lifetime_value, top_products, window_orders
from .service import campaign_report, funnel, funnel_rates, overview_report, reports_refresh, scope_report
from .story import customer_story
from .uplift import NOT_SIGNIFICANT, uplift_mean, uplift_proportion

__all__ = [
    "NOT_SIGNIFICANT",
    "attribution_window",
    "campaign_report",
    "customer_story",
    "funnel",
    "funnel_rates",
    "lifetime_value",
    "overview_report",
    "reports_refresh",
    "scope_report",
    "top_products",
    "uplift_mean",
    "uplift_proportion",
    "window_orders",
]
