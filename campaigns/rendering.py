"""Render marketer-edited Jinja templates safely: sandboxed, strict, escaped, bounded in time and size.

Three parts per email (subject, HTML, text). The marketer's HTML and text bodies are rendered in an
ImmutableSandboxedEnvironment, then wrapped in a shared layout from templates/email/ (trusted files),
CSS is inlined for mail clients that drop <style>, and links are rewritten for click tracking.
"""

from __future__ import annotations

import contextvars
import functools
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import css_inline

try:
    import resource  # Unix only
except ImportError:
    resource = None
from django.conf import settings
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from markupsafe import Markup, escape

MAX_OUTPUT_CHARS = 500_000  # per part; a real email is a few tens of KB
MAX_RENDER_SECONDS = 2.0
MAX_LOOP_ITEMS = 10_000  # summed over every range() in one render
MAX_POWER_EXPONENT = 100
MAX_POWER_BITS = 4096
MAX_REPEAT = 10_000  # 'x' * n
MAX_RENDER_BYTES = 256 * 1024 * 1024  # memory that renders may take on top of what the process holds

LAYOUT_DIR = Path(settings.BASE_DIR) / "templates"
_DICT_ATTRIBUTES = frozenset(dir(dict))  # every name getattr() finds on a plain dict
_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("range_budget")


class RenderError(Exception):
    """The template is invalid or refused to render; the message says why and where."""


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The stock sandbox blocks attribute tricks; this also bounds arithmetic and loops."""

    intercepted_binops = frozenset({"**", "*"})

    def getattr(self, obj, attribute):
        # The render context is plain dicts. For one, getattr() raises AttributeError for any name that
        # is not an attribute of dict, and the stock sandbox then looks the key up: do that directly, the
        # same result without raising and catching an exception per `offer.name` (a profile put the
        # stock method at the top of rendering). Any other object, or a dict attribute's name, as before.
        if type(obj) is dict and type(attribute) is str and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, int | float):
            # Jinja's ** is left-associative, so (9**9)**9 chains: bound the result's size, not only the exponent.
            bits = abs(int(left)).bit_length() if isinstance(left, int | float) else 0
            if abs(right) > MAX_POWER_EXPONENT or bits * abs(right) > MAX_POWER_BITS:
                raise SecurityError(f"a {bits}-bit number ** {right} is too large to compute")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    if n > MAX_REPEAT:
                        raise SecurityError(f"repeating a sequence {n} times is not allowed")
                    if _chars(seq) * n > MAX_OUTPUT_CHARS:  # ('x' * 9999) * 9999: each count is allowed
                        raise SecurityError(f"repeating a sequence {n} times makes more than an email")
        return super().call_binop(context, operator, left, right)


def _chars(seq) -> int:
    """What a sequence can print as: its characters, or its strings' (['x' * 9999] * 9999 | join)."""
    if isinstance(seq, str):
        return len(seq)
    return sum(len(item) if isinstance(item, str) else 1 for item in seq)


def _bounded_center(value, width: int = 80) -> str:
    # Jinja's center pads to any width: refuse one wider than an email before building it.
    if isinstance(width, int) and width > MAX_OUTPUT_CHARS:
        raise SecurityError(f"centering in {width} characters is larger than an email")
    return value.center(width)  # as Jinja's do_center (a Markup stays Markup)


def _bounded_range(*args):
    items = range(*args)
    budget = _budget.get(None)
    if budget is not None:
        budget[0] -= len(items)
        if budget[0] < 0:
            raise SecurityError(f"loops over more than {MAX_LOOP_ITEMS} items in one email")
    return items


def money(value, currency: str = "") -> str:
    """A price as the emails show it (the money filter; the offer pages use it too): "€35.00"."""
    return _money_of(str(value), currency)


# A campaign's emails show the same few prices again and again. typed: a currency of 1 and of True are
# equal keys but different texts.
@functools.lru_cache(maxsize=1024, typed=True)
def _money_of(text: str, currency: str) -> str:
    try:
        amount = Decimal(text).quantize(Decimal("0.01"))
    except Exception:  # noqa: BLE001 - a filter must not crash on odd input
        return text
    symbol = {"GBP": "£", "EUR": "€", "USD": "$"}.get(currency, "")
    return f"{symbol}{amount:,}" if symbol else f"{amount:,} {currency}".strip()


def _make_env(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(
        undefined=StrictUndefined, autoescape=autoescape, trim_blocks=True, lstrip_blocks=True
    )
    env.globals["range"] = _bounded_range
    env.filters["money"] = money
    env.filters["center"] = _bounded_center
    return env


HTML_ENV = _make_env(autoescape=True)
TEXT_ENV = _make_env(autoescape=False)
# The layouts are our own files, not marketer input: a plain environment is fine for them.
LAYOUT_ENV = Environment(
    loader=FileSystemLoader(LAYOUT_DIR),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


# One inliner for the process: building it per email parses its options again.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)
_SLOT = "@@xsell-slot-{}@@"  # survives autoescaping unchanged (no & < > " ')
_SLOT_RE = re.compile(r"@@xsell-slot-([a-z_]+)@@")


@functools.lru_cache(maxsize=64)
def _layout_pieces(name: str, variables: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The layout rendered once with a marker per variable, cut at the markers: literal pieces and the
    variable between each two; None when filling the markers would not reproduce a real render."""
    template = LAYOUT_ENV.get_template(name)
    marked = template.render({v: Markup(_SLOT.format(v)) for v in variables})
    parts = _SLOT_RE.split(marked)
    pieces, slots = tuple(parts[0::2]), tuple(parts[1::2])
    if set(slots) - set(variables):
        return None
    # A layout that filters or tests a variable's value (|upper, {% if x == ... %}) cannot be cut up:
    # check once against a real render with values that need escaping.
    probe = {v: f"https://x.example/{v}?a=1&b=<2>\"'" for v in variables}
    if "body" in probe:
        probe["body"] = Markup('<p class="offer">A &amp; B</p>')
    if _fill(pieces, slots, probe, _autoescaped(name)) != template.render(probe):
        return None
    return pieces, slots


def _fill(pieces, slots, values: dict, autoescape: bool) -> str:
    out = [pieces[0]]
    for slot, piece in zip(slots, pieces[1:], strict=True):
        value = values[slot]
        out.append(escape(value) if autoescape else str(value))
        out.append(piece)
    return "".join(out)


def layout_fill(name: str, **values) -> str:
    """Render one of our layouts: rendered once per process with markers, then filled per email.

    The layouts are trusted files that only place their variables, so filling the markers with the
    escaped values is the same text as a render (checked once per layout); a layout edited on disk is
    picked up on the next worker start.
    """
    cut = _layout_pieces(name, tuple(sorted(values)))
    if cut is None:
        return LAYOUT_ENV.get_template(name).render(values)
    return _fill(*cut, values, _autoescaped(name))


def _autoescaped(name: str) -> bool:
    return LAYOUT_ENV.autoescape(name) if callable(LAYOUT_ENV.autoescape) else LAYOUT_ENV.autoescape


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@functools.lru_cache(maxsize=256)
def _compile(env: ImmutableSandboxedEnvironment, source: str):
    # A campaign renders one template for thousands of recipients: compile it once per process.
    template = env.from_string(source)
    # Jinja keeps a template's globals as a ChainMap over the environment's, which every render copies
    # key by key in Python (runtime.new_context, Context.__init__): more time than a subject line's own
    # code. Ours are set at import and never change, so a plain dict of them is the same globals.
    template.globals = dict(template.globals)
    return template


def _render_bounded(
    env: ImmutableSandboxedEnvironment, source: str, context: dict, part: str, deadline: float
) -> str:
    """Render with a cap on loop items and output size, stopping at the email's deadline."""
    try:
        template = _compile(env, source)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise RenderError(f"{part}{f', line {line}' if line else ''}: {exc}") from None
    token = _budget.set([MAX_LOOP_ITEMS])
    chunks, size = [], 0
    try:
        for chunk in template.generate(**context):
            size += len(chunk)  # every piece: a filter (center, join) can make one of any size
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"output is larger than {MAX_OUTPUT_CHARS} characters")
            if time.monotonic() > deadline:
                raise SecurityError(f"took longer than {MAX_RENDER_SECONDS} s")
            chunks.append(chunk)
    except MemoryError:
        raise RenderError(f"{part}: needs more than {MAX_RENDER_BYTES >> 20} MB of memory") from None
    except Exception as exc:  # noqa: BLE001 - any failure fails this one render, never the worker
        line = _template_line(exc)
        raise RenderError(f"{part}{f', line {line}' if line else ''}: {type(exc).__name__}: {exc}") from None
    finally:
        _budget.reset(token)
    return "".join(chunks)


def _template_line(exc: BaseException) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class _alarm:
    """SIGALRM stops a render stuck inside one expression; only possible in the main thread.

    A render on its own arms the timer for its seconds and disarms it after. Inside a render_session()
    (a campaign chunk: hundreds of renders) the session arms a repeating timer once, every TICK_SECONDS,
    and each render only sets its deadline: the handler raises when the render in progress is past it
    and lets the ticks between renders pass. That saves two system calls per email, and the handler is
    installed once for the session (signal.signal() turns every handler it returns into an enum member,
    raising and catching a ValueError for a function). The handler is put in place for the outermost
    alarm and the previous one restored after it."""

    TICK_SECONDS = 0.1
    installed = False  # our handler is in place (main thread only, so no lock)
    ticking = False  # a session's repeating timer runs: renders set `deadline` instead of arming it
    deadline: float | None = None  # time.monotonic() by which the render in progress must end

    def __init__(self, seconds: float, *, tick: bool = False):
        self.seconds, self.tick = seconds, tick
        self.started_ticking = self.armed = False
        self.active = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def __enter__(self):
        if self.active:
            self.outermost = not _alarm.installed
            if self.outermost:
                self.previous = signal.signal(signal.SIGALRM, self._raise)
                _alarm.installed = True
            try:
                # Each flag is set before its timer is armed: an exception in between (another signal's
                # handler) still has __exit__ disarm it, never leaving a timer with the default handler.
                if self.tick and not _alarm.ticking:
                    _alarm.ticking, _alarm.deadline, self.started_ticking = True, None, True
                    signal.setitimer(signal.ITIMER_REAL, self.TICK_SECONDS, self.TICK_SECONDS)
                elif self.seconds and _alarm.ticking:
                    _alarm.deadline = time.monotonic() + self.seconds
                elif self.seconds:
                    self.armed = True
                    signal.setitimer(signal.ITIMER_REAL, self.seconds)
            except BaseException:
                self.__exit__()  # __exit__ is not called when __enter__ fails: restore the handler
                raise

    def __exit__(self, *exc):
        if not self.active:
            return
        try:
            if self.started_ticking or self.armed:
                signal.setitimer(signal.ITIMER_REAL, 0)  # first: nothing rings after this
        finally:
            # State is restored even if the disarming was interrupted, so later renders keep their bound.
            if self.started_ticking or self.seconds:
                _alarm.deadline = None
            if self.started_ticking:
                _alarm.ticking = self.started_ticking = False
            self.armed = False
            if self.outermost:
                signal.signal(signal.SIGALRM, self.previous)
                _alarm.installed = False

    @staticmethod
    def _raise(signum, frame):
        if _alarm.ticking and (_alarm.deadline is None or time.monotonic() < _alarm.deadline):
            return  # a tick between renders, or before this render's deadline
        # Once per deadline: should this land outside the render (in its __exit__), the next ticks do
        # not raise again in whatever runs after it.
        _alarm.deadline = None
        raise TimeoutError(f"took longer than {MAX_RENDER_SECONDS} s")


class _memory_cap:
    """While templates render, the process's data segment (RLIMIT_DATA) is capped at its size when the
    first render began plus MAX_RENDER_BYTES, so a template that builds a huge value fails that render
    with a MemoryError instead of taking the machine's memory (and the worker with it). Checks of single
    operations cannot cover them all: {% set x = x ~ x %} written twenty times, 'x'.ljust(10**10), a
    filter's width, a {% set %} block repeating its content.

    The limit is the process's, so the renders of all threads share one cap: the first to enter sets
    it, the last to leave restores the previous limits. Without /proc (not Linux) nothing is capped and
    the time and output bounds remain. The limit counts private writable mappings, so the other threads'
    allocations count too while a render runs (a render that nearly fills the cap can make theirs fail),
    and a process started meanwhile inherits the cap."""

    _lock = threading.Lock()
    _users = 0
    _previous: tuple[int, int] | None = None

    # The steps are ordered so that an exception between two of them (a task's time limit, raised by a
    # signal handler) leaves the process uncapped rather than capped for good: the count goes up before
    # the cap is set and down after it is lifted, and the limits to restore are kept before the cap.

    def __enter__(self):
        cls = _memory_cap
        with cls._lock:
            cls._users += 1
            if cls._users == 1:
                _cap_set(cls)

    def __exit__(self, *exc):
        cls = _memory_cap
        with cls._lock:
            if cls._users == 1 and cls._previous is not None:
                resource.setrlimit(resource.RLIMIT_DATA, cls._previous)
                cls._previous = None
            cls._users -= 1


def _cap_set(cap_state) -> None:
    """Lower RLIMIT_DATA to the data size now plus MAX_RENDER_BYTES, keeping the limits it replaces in
    cap_state._previous; leave it as it is without resource or /proc, or under a lower limit."""
    if resource is None:
        return
    try:
        with open("/proc/self/status", "rb") as status:
            used = int(re.search(rb"^VmData:\s+(\d+) kB", status.read(), re.MULTILINE).group(1)) * 1024
    except (OSError, AttributeError):  # no /proc, or no VmData line in it
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = used + MAX_RENDER_BYTES
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return
    cap_state._previous = (soft, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))


class render_session:
    """Wrap many email_render() calls: the alarm's handler is installed, its repeating timer armed and
    the memory cap set once for all of them. A SIGALRM from elsewhere during the session meets this
    handler, not the previous one: it fails a render past its deadline, or is ignored."""

    def __init__(self):
        self.cap, self.alarm = _memory_cap(), _alarm(0, tick=True)

    def __enter__(self):
        self.cap.__enter__()
        try:
            self.alarm.__enter__()
        except BaseException:
            self.cap.__exit__()
            raise

    def __exit__(self, *exc):
        try:
            self.alarm.__exit__()
        finally:
            self.cap.__exit__()


_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)


def links_rewrite(*, html: str, track: Callable[[str], str]) -> str:
    """Point every absolute http(s) link at the click tracker; track(url) returns the tracked URL."""

    def replace(match: re.Match) -> str:
        url = match.group(3).replace("&amp;", "&")
        tracked = track(url)
        if tracked is url:  # already ours (most links of an email): the text as it was
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{tracked}{match.group(2)}"

    return _HREF.sub(replace, html)


def email_render(
    *,
    subject: str,
    html: str,
    text: str,
    context: dict,
    layout: str = "email/base.html",
    track: Callable[[str], str] | None = None,
    footer: dict | None = None,
    inline_css: bool = True,
) -> RenderedEmail:
    """Render the three parts. footer holds the unsubscribe/preferences/pixel URLs the layout adds.

    The email has MAX_RENDER_SECONDS for its three parts (one alarm for all: arming and disarming it
    are system calls, and so are installing and restoring its handler outside a render_session()).
    With inline_css=False the page's CSS is left for pages_inline (a batch at a time)."""
    deadline = time.monotonic() + MAX_RENDER_SECONDS
    try:
        with _memory_cap(), _alarm(MAX_RENDER_SECONDS):
            rendered_subject = " ".join(
                _render_bounded(TEXT_ENV, subject, context, "subject", deadline).split()
            )
            if not rendered_subject:
                raise RenderError("subject: renders to an empty line")
            body_html = _render_bounded(HTML_ENV, html, context, "HTML", deadline)
            if track is not None:
                # Only the marketer's body is tracked: footer links (unsubscribe, preferences) stay direct.
                body_html = links_rewrite(html=body_html, track=track)
            body_text = _render_bounded(TEXT_ENV, text, context, "text", deadline)
    except TimeoutError:  # the alarm rang between two parts' renders
        raise RenderError(f"took longer than {MAX_RENDER_SECONDS} s") from None
    footer = footer or {}
    try:
        page = layout_fill(layout, body=Markup(body_html), subject=rendered_subject, **footer)
        text_layout = layout.rsplit(".", 1)[0] + ".txt"
        full_text = layout_fill(text_layout, body=body_text, **footer)
    except TemplateError as exc:
        raise RenderError(f"layout {layout}: {exc}") from None
    if inline_css:
        page = _INLINER.inline(page)
    return RenderedEmail(subject=rendered_subject[:500], html=page, text=full_text)


def pages_inline(pages: list[str]) -> list[str]:
    """CSS inlined into many pages at once: css_inline's inline_many works on every core without
    holding the GIL, half the time per page of inlining them one by one on two cores (bench/README.md)."""
    return _INLINER.inline_many(pages) if pages else []


def template_validate(*, subject: str, html: str, text: str, layout: str, context: dict) -> None:
    """Raise RenderError if any part does not compile or does not render with the sample context."""
    email_render(subject=subject, html=html, text=text, context=context, layout=layout)


def template_order_problem(*, subject: str, html: str, text: str, layout: str) -> str | None:
    """Why the template fails for an email without a triggering order (one-off and recurring campaigns:
    `order` is None), or None when it renders."""
    try:
        template_validate(
            subject=subject, html=html, text=text, layout=layout, context={**sample_context(), "order": None}
        )
    except RenderError as exc:
        return (
            f"without an order (one-off and recurring emails have none) it does not render: {exc}. "
            "Use it for post-purchase campaigns, or guard it with {% if order %}…{% endif %}"
        )
    return None


def sample_context() -> dict:
    """A plausible customer with two offers, for validation and previews."""
    offers = [
        {
            "name": "Leather case",
            "sku": "CASE-1",
            "price": Decimal("29.00"),
            "currency": "GBP",
            "category": "accessories",
            "image_url": "https://shop.example/img/case.jpg",
            "reason": "Often bought within 2 weeks of the phone you bought on 3 May",
            "url": "https://shop.example/p/case-1",
            "accept_url": "https://shop.example/offer/accept",
            "score": 0.42,
        },
        {
            "name": "Screen protector",
            "sku": "SCR-1",
            "price": Decimal("9.99"),
            "currency": "GBP",
            "category": "accessories",
            "image_url": "",
            "reason": "Popular with customers who bought the same phone",
            "url": "https://shop.example/p/scr-1",
            "accept_url": "https://shop.example/offer/accept",
            "score": 0.31,
        },
    ]
    return {
        "customer": {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "full_name": "Ada Lovelace",
            "email": "ada@example.com",
            "country": "United Kingdom",
        },
        "offers": offers,
        "order": {  # as a post-purchase email has it (compose._context); other emails have None
            "external_id": "100234",
            "placed_at": "2026-05-03",
            "total": Decimal("799.00"),
        },
        "campaign": {"name": "Sample campaign"},
        "offer_page_url": "https://shop.example/offers",
        "unsubscribe_url": "https://shop.example/unsubscribe",
        "preferences_url": "https://shop.example/preferences",
    }
