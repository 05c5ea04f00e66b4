"""Formatting filters (reports, and prices on the recipients' pages) and the admin index's overview."""

from django import template

from ..rendering import money as money_format
from ..reports import overview_report

register = template.Library()


@register.filter
def pct(value, digits: int = 1) -> str:
    """0.1234 → '12.3%'; None (nothing to divide by) → '—'."""
    if value is None:
        return "—"
    return f"{value * 100:.{digits}f}%"


@register.filter
def pp(value, digits: int = 2) -> str:
    """A difference of two rates, in percentage points: 0.0278 → '+2.78 pp'; None → '—'."""
    if value is None:
        return "—"
    return f"{value * 100:+.{digits}f} pp"


@register.filter
def relative(value) -> str:
    """A difference as a share of the holdout's figure: 0.352 → '(+35% relative)'; '' when there is none
    (the holdout's figure is 0, or a group is empty)."""
    if not isinstance(value, int | float):
        return ""
    return f"({value * 100:+.0f}% relative)"


@register.filter
def money(value, currency: str = "") -> str:
    """A price as the emails show it: the offer pages must not say "35.00 EUR" for the email's "€35.00"."""
    return money_format(value, currency)


@register.filter
def num(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


@register.simple_tag(takes_context=True)
def xsell_overview(context, days: int = 90) -> dict | None:
    """The last `days` days across campaigns, for users who may view campaigns."""
    request = context.get("request")
    if request is None or not request.user.has_perm("campaigns.view_campaign"):
        return None
    # ?refresh=1 recomputes now (beat refreshes it every 5 minutes; the demo runs no beat).
    report = overview_report(days=days, cached=True, refresh=request.GET.get("refresh") == "1")
    counts = report["counts"]
    steps = ("audience", "sent", "delivered", "opened", "clicked", "accepted", "converted")
    report["charts"] = {
        "daily": report["daily"],
        "funnel": {"labels": list(steps), "values": [counts[s] for s in steps]},
    }
    return report
