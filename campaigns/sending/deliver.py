"""Deliver over one connection per batch and record each outcome: sent, retry (4xx), failed (5xx,
hard bounces suppress), uncertain (the conversation broke: never resent)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import smtplib

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from customers.models import Customer

from ..models import Message
from .compose import mail_domain

log = logging.getLogger(__name__)


SENT_FLUSH = 50  # accepted messages recorded as sent per UPDATE


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
        Message.objects.filter(pk__in=message_ids, status=Message.Status.SENDING).update(
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


def deliver(ready: list[tuple[Message, EmailMultiAlternatives]], counts: dict[str, int]) -> None:
    if not ready:
        return
    connection = get_connection(fail_silently=False)
    try:
        connection.open()
    except Exception as exc:  # noqa: BLE001 - nothing was sent: every message may be retried
        for message, _ in ready:
            _record(message, _Outcome.RETRY, f"cannot connect: {exc}")
        counts["retry"] += len(ready)
        return
    sent: list[int] = []
    try:
        for message, email in ready:
            email.connection = connection
            try:
                email.send()
            except Exception as exc:  # noqa: BLE001 - one message's failure must not stop the batch
                outcome, hard, error = _classify(exc)
                _record(message, outcome, error, hard_bounce=hard)
                counts[outcome] += 1
                if outcome == _Outcome.UNCERTAIN:
                    _reconnect(connection)
                continue
            sent.append(message.pk)
            counts["sent"] += 1
            if len(sent) >= SENT_FLUSH:
                _record_sent(sent)
    finally:
        # A crash before this leaves the unflushed ones in "sending": swept to "uncertain", never resent.
        _record_sent(sent)
        with contextlib.suppress(Exception):  # closing a dead connection
            connection.close()


def _reconnect(connection) -> None:
    with contextlib.suppress(Exception):
        connection.close()
    try:
        connection.open()
    except Exception:  # noqa: BLE001 - the next send will fail and be classified on its own
        log.warning("SMTP reconnect failed")
