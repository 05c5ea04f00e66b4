"""Deliver over one connection per batch and record each outcome: sent, retry (4xx), failed (5xx,
hard bounces suppress), uncertain (the conversation broke: never resent)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import random
import smtplib
import threading

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from customers.models import Customer

from ..models import Message
from .compose import mail_domain

log = logging.getLogger(__name__)


SENT_FLUSH = 200  # accepted messages recorded as sent per UPDATE (its cost is mostly per statement)


class _Outcome:
    SENT, RETRY, FAILED, UNCERTAIN = "sent", "retry", "failed", "uncertain"


def _classify(exc: Exception) -> tuple[str, bool, str]:
    """(outcome, hard_bounce, error text) for an exception raised while sending one message."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()))
        return _by_code(code, text)
    if isinstance(exc, smtplib.SMTPSenderRefused | smtplib.SMTPDataError):
        return _by_code(exc.smtp_code, exc.smtp_error)
    status = getattr(exc, "status_code", None)  # an ESP's HTTP API (anymail)
    if status is not None:
        if status == 429 or status >= 500:
            return _Outcome.RETRY, False, f"ESP answered {status}"
        return _Outcome.FAILED, "recipient" in type(exc).__name__.lower(), f"ESP answered {status}: {exc}"
    if type(exc).__name__ == "AnymailRecipientsRefused":
        return _Outcome.FAILED, True, str(exc)
    # Disconnects and timeouts mid-conversation: the server may have accepted the message.
    return _Outcome.UNCERTAIN, False, f"{type(exc).__name__}: {exc}"


def _by_code(code: int, text) -> tuple[str, bool, str]:
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    if 400 <= code < 500:
        return _Outcome.RETRY, False, f"{code} {text}"
    # 5.1.x (bad mailbox / domain) is a hard bounce; other 5xx (policy, size) fail only this message.
    hard = code in (550, 551, 553) or " 5.1." in f" {text}"
    return _Outcome.FAILED, hard, f"{code} {text}"


def _retry_at(attempts: int, now: dt.datetime) -> dt.datetime:
    base = settings.SEND_RETRY_BASE_SECONDS * (2 ** max(attempts - 1, 0))
    return now + dt.timedelta(seconds=base * random.uniform(0.5, 1.5))  # jitter spreads retries out


def _record_sent(message_ids: list[int]) -> None:
    """Mark a run of accepted messages sent in one statement (their Message-ID derives from the token)."""
    if message_ids:
        Message.objects.filter(pk__any=message_ids, status=Message.Status.SENDING).update(
            status=Message.Status.SENT,
            sent_at=timezone.now(),
            message_id=Concat(Value("<"), F("token"), Value(f"@{mail_domain()}>")),
        )
        message_ids.clear()


def _record(message: Message, outcome: str, error: str = "", hard_bounce: bool = False) -> None:
    now = timezone.now()
    fields: dict = {"error": error[:2000]}
    if outcome == _Outcome.RETRY and message.attempts < settings.SEND_MAX_ATTEMPTS:
        fields.update(status=Message.Status.PLANNED, send_after=_retry_at(message.attempts, now))
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

    def __init__(self, counts: dict[str, int], depth: int = 2):
        self.counts = counts
        self.chunks: queue.Queue = queue.Queue(maxsize=depth)  # bounded: composing waits for SMTP
        self.outcomes: queue.SimpleQueue = queue.SimpleQueue()
        self.sent: list[int] = []
        self.thread = threading.Thread(target=self._run, name="xsell-courier", daemon=True)

    def __enter__(self) -> Courier:
        self.thread.start()
        return self

    def send(self, ready: list[tuple[Message, EmailMultiAlternatives]]) -> None:
        if ready:
            self.chunks.put(ready)
        self.record()

    def __exit__(self, *exc) -> None:
        self.chunks.put(None)
        self.thread.join()
        # A crash before this leaves the unrecorded ones in "sending": swept to "uncertain", never resent.
        self.record()
        _record_sent(self.sent)

    def record(self) -> None:
        """Record the outcomes the thread has reported so far."""
        while True:
            try:
                message, outcome, error, hard = self.outcomes.get_nowait()
            except queue.Empty:
                return
            self.counts[outcome] += 1
            if outcome == _Outcome.SENT:
                self.sent.append(message.pk)
                if len(self.sent) >= SENT_FLUSH:
                    _record_sent(self.sent)
            else:
                _record(message, outcome, error, hard_bounce=hard)

    def _run(self) -> None:
        connection, refused = None, ""
        try:
            while (ready := self.chunks.get()) is not None:
                if connection is None and not refused:
                    connection = get_connection(fail_silently=False)
                    try:
                        connection.open()
                    except Exception as exc:  # noqa: BLE001 - nothing was sent: every message may be retried
                        connection, refused = None, f"cannot connect: {exc}"
                if refused:
                    for message, _ in ready:
                        self.outcomes.put((message, _Outcome.RETRY, refused, False))
                    continue
                for message, email in ready:
                    self.outcomes.put((message, *_send_one(connection, email)))
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):  # closing a dead connection
                    connection.close()


def _send_one(connection, email: EmailMultiAlternatives) -> tuple[str, str, bool]:
    email.connection = connection
    try:
        email.send()
    except Exception as exc:  # noqa: BLE001 - one message's failure must not stop the batch
        try:
            outcome, hard, error = _classify(exc)
        except Exception:  # noqa: BLE001 - the courier must outlive odd exceptions, or the caller waits
            outcome, hard, error = _Outcome.UNCERTAIN, False, f"{type(exc).__name__}: {exc}"
        if outcome == _Outcome.UNCERTAIN:
            _reconnect(connection)
        return outcome, error, hard
    return _Outcome.SENT, "", False


def _reconnect(connection) -> None:
    with contextlib.suppress(Exception):
        connection.close()
    try:
        connection.open()
    except Exception:  # noqa: BLE001 - the next send will fail and be classified on its own
        log.warning("SMTP reconnect failed")
