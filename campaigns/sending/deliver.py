"""Deliver over one connection per batch and record each outcome: sent, retry (4xx, or the
conversation broke before the message's DATA), deferred (never offered to the server: it could not be
reached, or the batch ran out of time), failed (5xx, or an address Django cannot put in a header; a
recipient's hard bounce suppresses them), uncertain (the conversation broke once DATA was sent: the
server may have the message, so it is never resent)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import random
import re
import smtplib
import threading
import time

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends import smtp as smtp_backend
from django.db import connection
from django.db.models import Case, DateTimeField, F, Value, When
from django.db.models.functions import Concat
from django.utils import timezone

from customers.models import Customer

from ..models import Message
from .compose import mail_domain

log = logging.getLogger(__name__)


SENT_FLUSH = 200  # accepted messages recorded as sent per UPDATE (its cost is mostly per statement)


class _Outcome:
    SENT, RETRY, FAILED, UNCERTAIN = "sent", "retry", "failed", "uncertain"
    DEFERRED = "deferred"  # counted with the retries


def _classify(exc: Exception, *, may_have_arrived: bool = True) -> tuple[str, bool, str]:
    """(outcome, hard_bounce, error text) for an exception raised while sending one message.
    may_have_arrived: False when the backend knows the server cannot have it (see _may_have_arrived)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()))
        return _by_code(code, text, at="RCPT")
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return _by_code(exc.smtp_code, exc.smtp_error, at="MAIL")
    if isinstance(exc, smtplib.SMTPDataError):
        return _by_code(exc.smtp_code, exc.smtp_error, at="DATA")
    if isinstance(exc, ValueError):  # an address or header Django refuses (BadHeaderError too): never sent
        return _Outcome.FAILED, False, f"{type(exc).__name__}: {exc}"
    status = getattr(exc, "status_code", None)  # an ESP's HTTP API (anymail)
    if status is not None:
        if status == 429 or status >= 500:
            return _Outcome.RETRY, False, f"ESP answered {status}"
        return _Outcome.FAILED, "recipient" in type(exc).__name__.lower(), f"ESP answered {status}: {exc}"
    if type(exc).__name__ == "AnymailRecipientsRefused":
        return _Outcome.FAILED, True, str(exc)
    # Disconnects, timeouts, a refused connection: once DATA was sent, the server may have accepted it.
    outcome = _Outcome.UNCERTAIN if may_have_arrived else _Outcome.RETRY
    return outcome, False, f"{type(exc).__name__}: {exc}"


# RFC 3463 status at the start of the reply text (or of a line of it), e.g. 5.1.1: not an IP address
# somewhere in the text ("Client host [5.1.20.4] blocked").
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b", re.MULTILINE)
_SENDER_STATUS = {"7", "8"}  # 5.1.7 and 5.1.8: the sender's address is bad, not the recipient's


def _by_code(code: int, text, *, at: str) -> tuple[str, bool, str]:
    """at: the command answered (MAIL, RCPT or DATA)."""
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    if 400 <= code < 500:
        return _Outcome.RETRY, False, f"{code} {text}"
    # A hard bounce is the recipient's mailbox or domain: a 5.1.x status (at RCPT, or at DATA from a
    # server that checks recipients late), or at RCPT a bare 550/551/553. Refusing our sender (MAIL:
    # its address, SPF, authentication), a relay or the content (5.7.x) says nothing about the
    # recipient: those, like other 5xx (size, policy), fail only this message.
    status = _ENHANCED.search(text)
    if status is not None:
        hard = (
            at != "MAIL"
            and status.group(1) == "5"
            and status.group(2) == "1"
            and status.group(3) not in _SENDER_STATUS  # Postfix refuses a sender at RCPT with these
        )
    else:
        hard = at == "RCPT" and code in (550, 551, 553)
    return _Outcome.FAILED, hard, f"{code} {text}"


def retry_fields(attempts: int, now: dt.datetime) -> dict:
    """The status of a message that may be tried again after `attempts`: planned after an exponential
    backoff, or failed once SEND_MAX_ATTEMPTS were made."""
    if attempts >= settings.SEND_MAX_ATTEMPTS:
        return {"status": Message.Status.FAILED}
    base = settings.SEND_RETRY_BASE_SECONDS * (2 ** max(attempts - 1, 0))
    # The jitter spreads retries out.
    return {
        "status": Message.Status.PLANNED,
        "send_after": now + dt.timedelta(seconds=base * random.uniform(0.5, 1.5)),
    }


def deferral_fields(message: Message, now: dt.datetime, error: str) -> dict:
    """The status of a message given back before the server saw it: planned again after about as long
    as it has been deferred so far (doubling from SEND_RETRY_BASE_SECONDS, at most
    SEND_DEFER_MAX_SECONDS, with jitter), without counting an attempt; failed once SEND_DEFER_HOURS have
    passed since the first of its current run of deferrals (reaching the server, or resuming a paused
    campaign, ends a run). An outage of the mail server delays a campaign, not fails it."""
    since = message.deferred_since or now
    waited = (now - since).total_seconds()
    fields = {"deferrals": F("deferrals") + 1, "deferred_since": since, "error": error[:2000]}
    if waited >= settings.SEND_DEFER_HOURS * 3600:
        error = f"not sent for {settings.SEND_DEFER_HOURS} hours; last: {error}"
        return {**fields, "status": Message.Status.FAILED, "error": error[:2000]}
    wait = min(max(waited, settings.SEND_RETRY_BASE_SECONDS), settings.SEND_DEFER_MAX_SECONDS)
    return {
        **fields,
        "status": Message.Status.PLANNED,
        "send_after": now + dt.timedelta(seconds=wait * random.uniform(0.5, 1.5)),
    }


def _record_sent(sent: list[tuple[int, dt.datetime]]) -> None:
    """Mark a run of accepted messages (id, when the server accepted it) sent, in one statement; their
    Message-ID derives from the token. Each keeps its own time: a slow server or ESP can take minutes
    over a run, and "clicked too soon after delivery" is measured from it."""
    if not sent:
        return
    domain = f"@{mail_domain()}>"
    if connection.vendor == "postgresql":
        ids, times = (list(column) for column in zip(*sent, strict=True))
        with connection.cursor() as cursor:
            cursor.execute(
                """UPDATE campaigns_message m SET status = %s, sent_at = v.t, message_id = '<' || m.token || %s,
                       deferred_since = NULL
                   FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, t)
                   WHERE m.id = v.id AND m.status = %s""",
                [Message.Status.SENT, domain, ids, times, Message.Status.SENDING],
            )
    else:
        Message.objects.filter(pk__in=[pk for pk, _ in sent], status=Message.Status.SENDING).update(
            status=Message.Status.SENT,
            sent_at=Case(*(When(pk=pk, then=Value(when)) for pk, when in sent), output_field=DateTimeField()),
            message_id=Concat(Value("<"), F("token"), Value(domain)),
            deferred_since=None,
        )
    sent.clear()


OUT_OF_TIME = "not sent: the batch ran out of time"


def out_of_time_error() -> str:
    """Why a message the batch's deadline kept from the server was deferred."""
    return f"{OUT_OF_TIME} (SEND_STUCK_MINUTES is {settings.SEND_STUCK_MINUTES}); sent in a later batch"


def _record(message: Message, outcome: str, error: str = "", hard_bounce: bool = False) -> None:
    now = timezone.now()
    # The server was reached (any outcome but a deferral): a run of deferrals, if any, has ended.
    fields: dict = {"error": error[:2000], "deferred_since": None}
    if outcome == _Outcome.DEFERRED:
        fields.update(deferral_fields(message, now, error))
    elif outcome == _Outcome.RETRY:
        # The deferrals were claims the server never saw: only real attempts count towards failing.
        fields.update(retry_fields(message.attempts - message.deferrals, now))
    elif outcome == _Outcome.UNCERTAIN:
        fields.update(status=Message.Status.UNCERTAIN)
    else:
        fields.update(status=Message.Status.FAILED)
    Message.objects.filter(pk=message.pk, status=Message.Status.SENDING).update(**fields)
    if hard_bounce:
        Customer.objects.filter(pk=message.customer_id, suppressed_reason="").update(
            suppressed_reason=Customer.Suppression.BOUNCED, suppressed_at=now
        )


class Courier:
    """Delivers chunks of ready emails over one connection in a thread while the next chunk is composed.

    Only the thread talks SMTP; it records nothing. Outcomes come back on a queue and are recorded by
    the thread that hands over the next chunk (the store stage's) and, at the end, by the caller's
    (their own database connections, never inside a transaction held across SMTP). An email is handed
    over only after its claim committed and its offers and links are stored.
    """

    def __init__(self, counts: dict[str, int], depth: int = 2, deadline: float | None = None):
        self.counts = counts
        # time.monotonic() after which no email is handed to the server (send_deadline): the rest of the
        # batch is retried later, so the sweep never calls "uncertain" what is still to be sent.
        self.deadline = deadline
        self.chunks: queue.Queue = queue.Queue(maxsize=depth)  # bounded: composing waits for SMTP
        self.outcomes: queue.SimpleQueue = queue.SimpleQueue()
        self.sent: list[tuple[int, dt.datetime]] = []  # accepted, not recorded yet: (id, when)
        self.handed: set[int] = set()  # ids of the messages given to the thread: sent or recorded by it
        self.thread = threading.Thread(target=self._run, name="xsell-courier", daemon=True)

    def __enter__(self) -> Courier:
        self.thread.start()
        return self

    def send(self, ready: list[tuple[Message, EmailMultiAlternatives]]) -> None:
        if ready:
            # Marked before it is queued: if the caller is interrupted in between, these stay "sending"
            # (the sweep's "uncertain") instead of being planned again while the courier may send them.
            self.handed.update(message.pk for message, _ in ready)
            self.chunks.put(ready)
        self.record()

    def __exit__(self, *exc) -> None:
        try:
            self.chunks.put(None)
            self.thread.join()
        finally:
            # Also when the wait is interrupted: what the server accepted or refused so far (a hard bounce
            # among it) is recorded. A crash before this leaves them in "sending": swept to "uncertain".
            self.record()
            _record_sent(self.sent)

    def record(self) -> None:
        """Record the outcomes the thread has reported so far."""
        while True:
            try:
                message, outcome, error, hard, when = self.outcomes.get_nowait()
            except queue.Empty:
                return
            self.counts[_Outcome.RETRY if outcome == _Outcome.DEFERRED else outcome] += 1
            if outcome == _Outcome.SENT:
                self.sent.append((message.pk, when))
                if len(self.sent) >= SENT_FLUSH:
                    _record_sent(self.sent)
            else:
                _record(message, outcome, error, hard_bounce=hard)

    def _run(self) -> None:
        connection, refused = None, ""
        try:
            while (ready := self.chunks.get()) is not None:
                if connection is None and not refused:
                    try:
                        connection = get_connection(fail_silently=False)  # a misconfigured backend fails here
                        connection.open()
                    except Exception as exc:  # noqa: BLE001 - nothing was sent: every message may be retried
                        log.error("cannot open the email connection: %s", exc)
                        connection, refused = None, f"cannot connect: {type(exc).__name__}: {exc}"
                for message, email in ready:
                    if not refused and self.deadline is not None and time.monotonic() > self.deadline:
                        refused = out_of_time_error()
                    if refused:  # never offered to the server: deferred, not an attempt
                        self.outcomes.put((message, _Outcome.DEFERRED, refused, False, None))
                        continue
                    outcome, error, hard = _send_one(connection, email)
                    self.outcomes.put((message, outcome, error, hard, timezone.now()))
                    if outcome != _Outcome.SENT and (outcome == _Outcome.UNCERTAIN or _closed(connection)):
                        # A new conversation for the next message. If the server cannot be reached, the
                        # rest of the batch is retried later instead of each waiting for a connection.
                        refused = _reconnect(connection)
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):  # closing a dead connection
                    connection.close()


def send_deadline() -> float:
    """The time.monotonic() until which a batch claimed now may hand emails to the server: most of
    SEND_STUCK_MINUTES. After that the sweep may call the batch's messages "uncertain" (never resent),
    and an email sent after it would be recorded as uncertain though delivered: a slow server or ESP
    sends the rest of the batch later instead."""
    return time.monotonic() + 0.9 * settings.SEND_STUCK_MINUTES * 60


def _send_one(connection, email: EmailMultiAlternatives) -> tuple[str, str, bool]:
    email.connection = connection
    try:
        email.send()
    except Exception as exc:  # noqa: BLE001 - one message's failure must not stop the batch
        try:
            outcome, hard, error = _classify(exc, may_have_arrived=_may_have_arrived(connection))
        except Exception:  # noqa: BLE001 - the courier must outlive odd exceptions, or the caller waits
            outcome, hard, error = _Outcome.UNCERTAIN, False, f"{type(exc).__name__}: {exc}"
        return outcome, error, hard
    return _Outcome.SENT, "", False


def _may_have_arrived(connection) -> bool:
    """After a failed send: whether the server may have the message. Only the campaign SMTP backend
    knows (backend.EmailBackend.delivered_nothing); with any other, assume it may."""
    delivered_nothing = getattr(connection, "delivered_nothing", None)
    return delivered_nothing is None or not delivered_nothing()


def _closed(connection) -> bool:
    """An SMTP backend whose conversation was closed (smtplib closes it on a 421, or when the
    connection broke): the next message needs a new one."""
    if not isinstance(connection, smtp_backend.EmailBackend):
        return False
    return connection.connection is None or getattr(connection.connection, "sock", None) is None


def _reconnect(connection) -> str:
    """Close the connection and open a new one; '' when it is open, else why not."""
    with contextlib.suppress(Exception):
        connection.close()
    try:
        connection.open()
    except Exception as exc:  # noqa: BLE001 - the caller retries the rest of the batch later
        log.warning("SMTP reconnect failed: %s", exc)
        return f"cannot reconnect: {type(exc).__name__}: {exc}"
    return ""
