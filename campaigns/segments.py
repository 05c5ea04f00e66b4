"""Segments: a JSON tree of rules, edited in the admin, compiled into one Customer query.

Format (the root is a group; ``{}`` or a group with no rules means every customer)::

    group: {"op": "and" | "or", "rules": [<rule or group>, ...]}
    rule:  {"field": F, "op": O, "value": V}

    field                   ops                       value
    orders_count            = != > >= < <=            whole number
    total_spent             = != > >= < <=            number
    last_order_at           before, after             "YYYY-MM-DD" (whole days in the site's time zone)
    days_since_last_order   = != > >= < <=            whole number of 24-hour days before now
    country                 in, not in                list of strings, case-insensitive
    marketing_consent       =                         true / false
    rfm_band                in, not in                list of band names (see rfm_band_expression)
    bought                  within, not within        {"sku": "..."} or {"category": "..."}, plus "days": N

``bought`` looks at placed orders only (not cancelled or returned); a category matches case-insensitively.
Customers who never ordered match no ``last_order_at`` or ``days_since_last_order`` rule; use
``orders_count = 0`` for them.

Validation and compilation are the same walk over the tree, so a rule that validates always compiles.
"""

import datetime as dt
import operator
import re
from decimal import Decimal, InvalidOperation
from functools import reduce
from typing import Any

from django.db.models import Case, CharField, Exists, OuterRef, Q, QuerySet, Value, When
from django.db.models.functions import Lower
from django.db.models.lookups import In
from django.utils import timezone

from customers.models import Customer, Order, OrderLine

NUMERIC_OPS = ("=", "!=", ">", ">=", "<", "<=")
LIST_OPS = ("in", "not in")
FIELD_OPS: dict[str, tuple[str, ...]] = {
    "orders_count": NUMERIC_OPS,
    "total_spent": NUMERIC_OPS,
    "last_order_at": ("before", "after"),
    "days_since_last_order": NUMERIC_OPS,
    "country": LIST_OPS,
    "marketing_consent": ("=",),
    "rfm_band": LIST_OPS,
    "bought": ("within", "not within"),
}
RFM_BANDS = ("champions", "loyal", "promising", "at_risk", "hibernating", "new")

# RFM thresholds (days are 24-hour periods before now; spend is in the shop's currency).
RFM_CHAMPION_DAYS = 30
RFM_CHAMPION_ORDERS = 5
RFM_CHAMPION_SPEND_ORDERS = 2
RFM_CHAMPION_SPEND = Decimal("1000")
RFM_LOYAL_DAYS = 90
RFM_LOYAL_ORDERS = 4
RFM_NEW_DAYS = 30
RFM_PROMISING_DAYS = 60
RFM_AT_RISK_ORDERS = 3
RFM_DORMANT_DAYS = 365

MAX_DEPTH = 8
MAX_RULES = 200
MAX_DAYS = 36_500  # a hundred years; more overflows date arithmetic
MAX_COUNT = 2**31 - 1
MAX_SPEND = Decimal("1e12")

_LOOKUPS = {"=": "exact", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
_WHOLE = re.compile(r"[+-]?\d+")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class SegmentError(ValueError):
    """A rule that cannot be used; the message starts with its path, e.g. ``rules[1].rules[0]: ...``."""


def segment_rules_validate(*, rules: dict) -> None:
    """Raise SegmentError naming the first offending rule; return None when the rules are usable."""
    _compile_root(rules, now=timezone.now())


def segment_queryset(*, rules: dict, now: dt.datetime | None = None) -> QuerySet[Customer]:
    """Every customer the rules match, as one SQL query (EXISTS subqueries for purchases)."""
    return Customer.objects.filter(_compile_root(rules, now=now or timezone.now()))


def segment_audience(*, segment, now: dt.datetime | None = None) -> QuerySet[Customer]:
    """The segment's mailable customers: with an email address, consenting, not suppressed or pausing."""
    return segment_queryset(rules=segment.rules, now=now).mailable(now)


def segment_preview(*, segment, sample: int = 10, now: dt.datetime | None = None) -> dict:
    """How many customers match, and the first ``sample`` of them (each with its ``rfm_band``)."""
    now = now or timezone.now()
    matching = segment_queryset(rules=segment.rules, now=now)
    rows = matching.annotate(rfm_band=rfm_band_expression(now)).order_by("pk")[:sample]
    return {"count": matching.count(), "sample": list(rows)}


def rfm_band_expression(now: dt.datetime | None = None) -> Case:
    """The customer's RFM band as SQL, from last_order_at (R), orders_count (F) and total_spent (M).

    Checked top to bottom, the first match wins, so the bands never overlap ("within N days" means the
    last order was placed at most N days before now):

    - hibernating: never ordered;
    - champions: within 30 days, and 5+ orders or (2+ orders and 1000+ spent);
    - loyal: within 90 days and 4+ orders;
    - new: within 30 days and exactly 1 order (so it is their first);
    - promising: within 60 days and 2-3 orders;
    - at_risk: 3+ orders and within 365 days but none of the above (4+ orders: last one 91-365 days
      ago; 3 orders: 61-365 days ago);
    - hibernating: everything else (no order for over 365 days, or 1-2 orders gone quiet).
    """
    now = now or timezone.now()

    def within(days: int) -> Q:
        return Q(last_order_at__gte=now - dt.timedelta(days=days))

    champion = Q(orders_count__gte=RFM_CHAMPION_ORDERS) | Q(
        orders_count__gte=RFM_CHAMPION_SPEND_ORDERS, total_spent__gte=RFM_CHAMPION_SPEND
    )
    return Case(
        When(Q(last_order_at__isnull=True) | Q(orders_count=0), then=Value("hibernating")),
        When(within(RFM_CHAMPION_DAYS) & champion, then=Value("champions")),
        When(within(RFM_LOYAL_DAYS) & Q(orders_count__gte=RFM_LOYAL_ORDERS), then=Value("loyal")),
        When(within(RFM_NEW_DAYS) & Q(orders_count=1), then=Value("new")),
        When(
            within(RFM_PROMISING_DAYS) & Q(orders_count__gte=2, orders_count__lte=3),
            then=Value("promising"),
        ),
        When(within(RFM_DORMANT_DAYS) & Q(orders_count__gte=RFM_AT_RISK_ORDERS), then=Value("at_risk")),
        default=Value("hibernating"),
        output_field=CharField(),
    )


# ------------------------------------------------------------------------------------------ compiling


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _compile_root(rules: Any, *, now: dt.datetime) -> Q:
    if rules is None or rules == {}:
        return Q()
    if not isinstance(rules, dict) or "field" in rules:
        raise SegmentError(
            'top level: must be a group {"op": "and" or "or", "rules": [...]} (or {} for every customer)'
        )
    if rules.get("rules") == [] and rules.get("op") in ("and", "or") and set(rules) <= {"op", "rules"}:
        return Q()
    counter = [0]
    return _compile_node(rules, path="", depth=0, now=now, counter=counter)


def _compile_node(node: Any, *, path: str, depth: int, now: dt.datetime, counter: list[int]) -> Q:
    where = path or "top level"
    if not isinstance(node, dict):
        raise SegmentError(
            f'{where}: expected a rule {{"field", "op", "value"}} or a group {{"op", "rules"}}, '
            f"got {type(node).__name__} {node!r}"
        )
    if "rules" in node and "field" in node:
        raise SegmentError(f'{where}: has both "field" and "rules"; a rule has "field", a group "rules"')
    if "rules" in node:
        return _compile_group(node, path=path, depth=depth, now=now, counter=counter)
    if "field" in node:
        counter[0] += 1
        if counter[0] > MAX_RULES:
            raise SegmentError(f"{where}: more than {MAX_RULES} rules in one segment")
        return _compile_rule(node, path=path, now=now)
    raise SegmentError(
        f'{where}: a rule needs "field", "op" and "value"; a group needs "op" and "rules" '
        f"(got keys {sorted(node)})"
    )


def _compile_group(node: dict, *, path: str, depth: int, now: dt.datetime, counter: list[int]) -> Q:
    where = path or "top level"
    if depth >= MAX_DEPTH:
        raise SegmentError(f"{where}: groups nested deeper than {MAX_DEPTH} levels")
    extra = sorted(set(node) - {"op", "rules"})
    if extra:
        raise SegmentError(f"{where}: unexpected key {extra[0]!r} in a group (allowed: op, rules)")
    op = node.get("op")
    if op not in ("and", "or"):
        shown = "missing" if "op" not in node else f"{op!r} is not a group operator"
        raise SegmentError(f"{_at(path, 'op')}: {shown}; use 'and' or 'or'")
    children = node["rules"]
    if not isinstance(children, list):
        raise SegmentError(f"{_at(path, 'rules')}: must be a list of rules or groups")
    if not children:
        raise SegmentError(f"{_at(path, 'rules')}: an empty group; add a rule or remove the group")
    compiled = [
        _compile_node(child, path=_at(path, f"rules[{i}]"), depth=depth + 1, now=now, counter=counter)
        for i, child in enumerate(children)
    ]
    return reduce(operator.and_ if op == "and" else operator.or_, compiled)


def _compile_rule(node: dict, *, path: str, now: dt.datetime) -> Q:
    field = node["field"]
    if not isinstance(field, str) or field not in FIELD_OPS:  # a list or object would not even hash
        raise SegmentError(f"{path}: unknown field {field!r} (known: {', '.join(FIELD_OPS)})")
    if field == "bought" and "days" in node:
        raise SegmentError(f'{path}: put "days" inside value, e.g. {{"sku": "85123A", "days": 30}}')
    extra = sorted(set(node) - {"field", "op", "value"})
    if extra:
        raise SegmentError(f"{path}: unexpected key {extra[0]!r} in a rule (allowed: field, op, value)")
    ops = FIELD_OPS[field]
    op = node.get("op")
    if not isinstance(op, str) or op not in ops:
        shown = "missing" if "op" not in node else f"{op!r} is not an operator for {field!r}"
        raise SegmentError(f"{_at(path, 'op')}: {shown}; use one of {', '.join(map(repr, ops))}")
    if "value" not in node:
        raise SegmentError(f"{_at(path, 'value')}: missing")
    return _COMPILERS[field](op, node["value"], _at(path, "value"), now)


def _numeric(column: str, op: str, value) -> Q:
    if op == "!=":
        return ~Q(**{column: value})
    return Q(**{f"{column}__{_LOOKUPS[op]}": value})


def _orders_count(op: str, value, path: str, now: dt.datetime) -> Q:
    return _numeric("orders_count", op, _whole_number(value, path, minimum=0, maximum=MAX_COUNT))


def _total_spent(op: str, value, path: str, now: dt.datetime) -> Q:
    return _numeric("total_spent", op, _number(value, path))


def _last_order_at(op: str, value, path: str, now: dt.datetime) -> Q:
    day = _iso_date(value, path)
    zone = timezone.get_default_timezone()
    if op == "before":
        return Q(last_order_at__lt=dt.datetime.combine(day, dt.time.min, tzinfo=zone))
    # "after" a day means from the start of the next day (after the last day there is: nobody).
    if day == dt.date.max:
        return Q(pk__in=[])
    return Q(last_order_at__gte=dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=zone))


def _days_since_last_order(op: str, value, path: str, now: dt.datetime) -> Q:
    # days since = floor((now - last_order_at) / 24h), so each comparison is a range on the indexed
    # column: "days >= n" is "last_order_at <= now - n days", and so on.
    n = _whole_number(value, path, minimum=0, maximum=MAX_DAYS)

    def cutoff(days: int) -> dt.datetime:
        return now - dt.timedelta(days=days)

    return {
        ">=": Q(last_order_at__lte=cutoff(n)),
        ">": Q(last_order_at__lte=cutoff(n + 1)),
        "<": Q(last_order_at__gt=cutoff(n)),
        "<=": Q(last_order_at__gt=cutoff(n + 1)),
        "=": Q(last_order_at__gt=cutoff(n + 1), last_order_at__lte=cutoff(n)),
        "!=": Q(last_order_at__gt=cutoff(n)) | Q(last_order_at__lte=cutoff(n + 1)),
    }[op]


def _country(op: str, value, path: str, now: dt.datetime) -> Q:
    names = [name.strip().lower() for name in _string_list(value, path)]
    matched = Q(In(Lower("country"), names))
    return matched if op == "in" else ~matched


def _marketing_consent(op: str, value, path: str, now: dt.datetime) -> Q:
    if not isinstance(value, bool):
        raise SegmentError(f"{path}: must be true or false, got {value!r}")
    return Q(marketing_consent=value)


def _rfm_band(op: str, value, path: str, now: dt.datetime) -> Q:
    bands = _string_list(value, path, choices=RFM_BANDS)
    matched = Q(In(rfm_band_expression(now), bands))
    return matched if op == "in" else ~matched


def _bought(op: str, value, path: str, now: dt.datetime) -> Q:
    example = '{"sku": "85123A", "days": 30} or {"category": "Kitchen", "days": 90}'
    if not isinstance(value, dict):
        raise SegmentError(f"{path}: must be an object like {example}")
    extra = sorted(set(value) - {"sku", "category", "days"})
    if extra:
        raise SegmentError(f"{path}: unexpected key {extra[0]!r} (allowed: sku or category, and days)")
    if ("sku" in value) == ("category" in value):
        raise SegmentError(f'{path}: give exactly one of "sku" or "category", e.g. {example}')
    key = "sku" if "sku" in value else "category"
    target = value[key]
    if not isinstance(target, str) or not target.strip():
        raise SegmentError(f"{path}.{key}: must be a non-empty string, got {target!r}")
    if "days" not in value:
        raise SegmentError(f'{path}: "days" is missing, e.g. {example}')
    days = _whole_number(value["days"], f"{path}.days", minimum=1, maximum=MAX_DAYS)
    lines = OrderLine.objects.filter(
        order__customer=OuterRef("pk"),
        order__status=Order.Status.PLACED,
        order__placed_at__gte=now - dt.timedelta(days=days),
    )
    if key == "sku":
        lines = lines.filter(product__sku=target.strip())
    else:
        lines = lines.filter(product__category__iexact=target.strip())
    matched = Q(Exists(lines))
    return matched if op == "within" else ~matched


_COMPILERS = {
    "orders_count": _orders_count,
    "total_spent": _total_spent,
    "last_order_at": _last_order_at,
    "days_since_last_order": _days_since_last_order,
    "country": _country,
    "marketing_consent": _marketing_consent,
    "rfm_band": _rfm_band,
    "bought": _bought,
}


# ------------------------------------------------------------------------------------------- values


def _whole_number(value, path: str, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        number = None
    if number is None:
        raise SegmentError(f"{path}: {value!r} is not a whole number")
    if number < minimum:
        raise SegmentError(f"{path}: {number} is less than {minimum}")
    if number > maximum:
        raise SegmentError(f"{path}: {number} is more than {maximum}")
    return number


def _number(value, path: str) -> Decimal:
    number = None
    if not isinstance(value, bool) and isinstance(value, int | float | str):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            number = None
    if number is None or not number.is_finite():
        raise SegmentError(f"{path}: {value!r} is not a number")
    if abs(number) > MAX_SPEND:
        raise SegmentError(f"{path}: {value!r} is too large")
    return number


def _iso_date(value, path: str) -> dt.date:
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise SegmentError(f"{path}: {value!r} is not a date (use YYYY-MM-DD)")


def _string_list(value, path: str, *, choices: tuple[str, ...] | None = None) -> list[str]:
    if not isinstance(value, list) or not value:
        raise SegmentError(f'{path}: must be a non-empty list of strings, e.g. ["United Kingdom"]')
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise SegmentError(f"{path}[{i}]: {item!r} is not a non-empty string")
        if choices is not None and item not in choices:
            raise SegmentError(f"{path}[{i}]: {item!r} is not an RFM band (use one of {', '.join(choices)})")
    return value
