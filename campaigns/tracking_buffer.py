"""Write-behind buffer for opens and clicks (TRACKING_BUFFER, needs REDIS_URL).

With the buffer on, the pixel checks its token's HMAC (a valid MAC means we issued the token) and
queues one compact record without the database; each process sends its records to a Redis list in
batches and never waits for Redis's answer (_Pusher). The click also needs the stored URL of its link,
offer or honeypot (campaigns.events.CLICK_SOURCES): one indexed SELECT the first time, then from Redis
(kept an hour) or, for a link this process has seen, from memory.

The Celery task campaigns.tracking_flush (beat, every 10 s) drains the list in chunks: it looks the
tokens up, drops unknown and expired ones (so only known rows are ever recorded), applies the
click-time machine checks (honeypot, too soon after delivery), inserts the events set-based and
refreshes the messages' first-touch columns.

At least once, never twice: a chunk is moved atomically to a "flushing" list and removed from it only
after the database transaction commits. A flush that crashed in between leaves the chunk there; the next
flush takes it again, and events already recorded for it (same message, kind, microsecond, network and
agent) are skipped. Flushes are serialised by a PostgreSQL advisory lock (SQLite serialises writers).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import threading
import time

import numpy as np
import pandas as pd
import redis
from django.conf import settings
from django.db import connection, transaction

from customers.bulk import bulk_insert

from .events import (
    CLICK_SOURCES,
    UA_MAX,
    click_from,
    click_request_reason,
    click_targets,
    client_facts,
    honeypot_url,
    messages_first_touch_refresh,
    scanner_seconds,
)
from .models import Event, Message

logger = logging.getLogger(__name__)
QUEUE = "xsell:tracking:queue"
FLUSHING = "xsell:tracking:flushing"
LINK_PREFIX = "xsell:tracking:link:"
LINK_SECONDS = 3600
CHUNK = 5_000
_LOCK_ID = 0x7873656C6C  # pg_advisory_xact_lock key of the flush
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_FIELDS = ["id", "kind", "token", "micros", "reason", "ip_hash", "user_agent"]

# Take the chunk left by a flush that did not finish, else move the next `n` records to FLUSHING.
_TAKE = """
local held = redis.call('LRANGE', KEYS[2], 0, -1)
if #held > 0 then return held end
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
for i = 1, #items, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
end
if #items > 0 then redis.call('LTRIM', KEYS[1], #items, -1) end
return items
"""
# Forget the chunk once it is in the database, unless another flush already did and took the next one.
_DONE = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def buffer_enabled() -> bool:
    return bool(getattr(settings, "TRACKING_BUFFER", False) and settings.REDIS_URL)


@functools.lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    # One connection pool per process (redis-py reopens its connections after a fork).
    return redis.Redis.from_url(url)


def buffer_client() -> redis.Redis:
    return _client(settings.REDIS_URL)


class _Pusher:
    """Records go to Redis in batches, one RPUSH per BATCH records, and no request waits for Redis.

    One RPUSH per request cost each open a send, a poll for earlier answers and a wakeup of Redis on the
    same cores (bench/README.md, Tracking); a batch pays them once. A record waits at most about DELAY
    seconds: the request that fills a batch sends it, a timer thread sends a partial one and reads the
    answers that came. So a process killed with SIGKILL loses at most its last BATCH records and those
    of batches still unanswered (Redis answers within a millisecond); a normal exit (a gunicorn worker
    restarting) sends them first.

    Answers are read one batch late, and a batch's records are kept until Redis has answered it: an
    error answer (out of memory, a read-only replica) or a broken connection writes every unanswered
    record to the database directly, through the flush's own code (which skips any that reached Redis
    after all, so none counts twice). After a failure pushes refuse for RETRY_SECONDS, and the views
    record directly rather than try to connect on every request.
    """

    BATCH = 16
    DELAY = 0.02
    MAX_UNANSWERED = 64  # batches sent without their answer read before a send waits for one
    RETRY_SECONDS = 1.0

    def __init__(self, url: str):
        # The pool only builds connections of the URL's kind; short timeouts, because a request that finds
        # Redis gone or stalled waits for it (then its records go to the database directly).
        self._pool = redis.ConnectionPool.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
        self._pid = os.getpid()
        self._connection = None
        self._pending: list[bytes] = []
        self._unanswered: collections.deque[list[bytes]] = collections.deque()
        self._retry_at = 0.0
        self._lock = threading.Lock()  # one command at a time on the socket, whatever the threads
        self._due = threading.Event()
        self._timer: threading.Thread | None = None
        atexit.register(self.confirm)

    def push(self, record: bytes) -> None:
        """Queue a record; raises redis.ConnectionError while Redis cannot be reached."""
        failed: list[bytes] = []
        with self._lock:
            if self._connection is None:
                self._connect()
            self._pending.append(record)
            if len(self._pending) >= self.BATCH:
                failed = self._send()
            elif len(self._pending) == 1:
                self._timer_wake()
        _write_directly(failed)

    def confirm(self) -> None:
        """Send what is pending and wait until Redis has answered every record (a flush must see them)."""
        if os.getpid() != self._pid:
            return  # a forked child inherits the parent's exit handler, not its records to send
        with self._lock:
            failed = self._send()
            try:
                while self._unanswered and not failed:
                    self._read(wait=True)
            except redis.RedisError as exc:
                failed = self._fail(exc, [])
        _write_directly(failed)

    def _connect(self) -> None:
        if time.monotonic() < self._retry_at:
            raise redis.ConnectionError("tracking buffer: Redis failed less than a second ago")
        connection = self._pool.make_connection()
        try:
            connection.connect()
        except redis.RedisError:
            self._retry_at = time.monotonic() + self.RETRY_SECONDS
            raise
        self._connection = connection

    def _send(self) -> list[bytes]:
        """Send the pending records as one RPUSH; the records to write directly if Redis failed."""
        batch, self._pending = self._pending, []
        if not batch:
            return []
        try:
            if self._connection is None:
                self._connect()
            self._read(wait=len(self._unanswered) >= self.MAX_UNANSWERED)
            # Packed by hand (redis-py's packer costs more than the rest of the push); no health check:
            # its PING's answer would be read in place of an RPUSH's.
            self._connection.send_packed_command([_rpush(QUEUE, batch)], check_health=False)
        except redis.RedisError as exc:
            return self._fail(exc, batch)
        self._unanswered.append(batch)
        return []

    def _read(self, *, wait: bool) -> None:
        while self._unanswered and (wait or self._connection.can_read(timeout=0)):
            self._connection.read_response()  # raises the error a failed RPUSH answered
            self._unanswered.popleft()
            wait = False

    def _fail(self, exc: Exception, batch: list[bytes]) -> list[bytes]:
        records = [record for sent in self._unanswered for record in sent] + batch
        self._unanswered.clear()
        if self._connection is not None:
            self._connection.disconnect()
        self._connection = None
        self._retry_at = time.monotonic() + self.RETRY_SECONDS
        logger.warning(
            "tracking buffer: Redis failed (%s); %d records are written to the database directly",
            exc,
            len(records),
        )
        return records

    def _timer_wake(self) -> None:
        if self._timer is None or not self._timer.is_alive():
            self._timer = threading.Thread(target=self._timer_run, name="tracking-buffer", daemon=True)
            self._timer.start()
        self._due.set()

    def _timer_run(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.DELAY)
            self._due.clear()
            with self._lock:
                failed = self._send()
                if not failed and self._unanswered:
                    # Read the answers that came, so an error is acted on now rather than at the next push
                    # (which may be hours away); come back while some are still to come.
                    try:
                        self._read(wait=False)
                    except redis.RedisError as exc:
                        failed = self._fail(exc, [])
                    if self._unanswered:
                        self._due.set()
            if failed:
                _write_directly(failed)
                connection.close()  # this thread's own database connection


def _rpush(key: str, values: list[bytes]) -> bytes:
    """RPUSH key value... in Redis's wire protocol (RESP): an array of bulk strings."""
    parts = [b"RPUSH", key.encode(), *values]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def _write_directly(records: list[bytes]) -> None:
    if not records:
        return
    try:
        _chunk_write(records)
    except Exception:
        logger.exception(
            "tracking buffer: %d records lost (neither Redis nor the database took them)", len(records)
        )


_pushers: dict[str, _Pusher] = {}  # by Redis URL, in this process only (emptied in a forked child)
_pushers_lock = threading.Lock()


def _pushers_forget() -> None:
    # A forked child starts with no pusher: the parent's sockets, timer threads and pending records are
    # the parent's, and a lock held by one of its threads at the fork would never be released here.
    global _pushers_lock
    _pushers.clear()
    _pushers_lock = threading.Lock()


os.register_at_fork(after_in_child=_pushers_forget)


def _pusher(url: str) -> _Pusher:
    with _pushers_lock:
        if url not in _pushers:
            _pushers[url] = _Pusher(url)
        return _pushers[url]


def _push(record: bytes) -> None:
    _pusher(settings.REDIS_URL).push(record)


def _micros(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)  # exact, unlike a float timestamp


_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps(..., separators=...) builds one per call


def _record(*, kind: str, token: str, request, reason: str, now: dt.datetime) -> bytes:
    facts = client_facts(request)
    return _JSON.encode(
        [
            os.urandom(6).hex(),
            kind,
            token,
            _micros(now),
            reason,
            facts["ip_hash"],
            facts["user_agent"],
        ]
    ).encode()


def open_buffer(*, token: str, request, reason: str, now: dt.datetime) -> None:
    """Queue an open of a well-signed token (unknown or expired rows are dropped by the flush)."""
    _push(_record(kind=Event.Kind.OPEN, token=token, request=request, reason=reason, now=now))


_LINK = "SELECT l.url, COALESCE(m.sent_at, m.created_at) FROM {targets} WHERE l.token = %(token)s"
_LINKS = {source: _LINK.replace("{targets}", click_from(source)) for source in CLICK_SOURCES}


# A link's URL is written before its email goes out and never changed after, so a process may keep it
# (only a lookup that found the row is kept: an offer's URL filled in on a retry was never found empty).
_links: dict[str, tuple[int, str]] = {}
# Per process (URLs of up to 2,000 characters); the dict is emptied when full (a miss costs one Redis
# round trip).
LINKS_KEPT = 20_000


def _key(source: str, token: str) -> str:
    """A click's token in a record and in the caches: a link's as it is (as in records queued before
    offers and the honeypot had their own sources), the others' with their source in front."""
    return token if source == "link" else f"{source}:{token}"


def _by_source(keys) -> dict[str, list[str]]:
    """The records' keys (_key) as tokens by source; a source this version does not know is left out."""
    tokens: dict[str, list[str]] = {}
    for key in keys:
        source, colon, token = key.partition(":")
        source, token = (source, token) if colon else ("link", key)
        if source in CLICK_SOURCES:
            tokens.setdefault(source, []).append(token)
    return tokens


def _link(source: str, token: str) -> tuple[int, str] | None:
    """(message's sending time in µs, URL) of a link: this process's copy, else Redis's, else the database.

    Redis keeps a looked-up link for LINK_SECONDS, so other processes find it there."""
    key = _key(source, token)
    cached = _links.get(key)
    if cached is not None:
        return cached
    # The click is already queued: a Redis failure here must only skip the cache, or the view would
    # record the click a second time directly.
    client = buffer_client()
    try:
        value = client.get(LINK_PREFIX + key)
    except redis.RedisError:
        value = None
    if value is not None:
        start, _, url = value.decode().partition("|")
        found = (int(start), url)
    else:
        with connection.cursor() as cursor:
            cursor.execute(_LINKS[source], {"token": token, "site": honeypot_url()})
            row = cursor.fetchone()
        if row is None:
            return None
        url, start = row
        if isinstance(start, str):  # SQLite returns an expression's datetime as its stored UTC text
            start = dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC)
        found = (_micros(start), url)
        with contextlib.suppress(redis.RedisError):
            client.set(LINK_PREFIX + key, f"{found[0]}|{url}", ex=LINK_SECONDS)
    if len(_links) >= LINKS_KEPT:
        _links.clear()
    _links[key] = found
    return found


def click_buffer(*, source: str, token: str, request, now: dt.datetime, oldest: dt.datetime) -> str | None:
    """The link's stored URL (None if unknown or expired), the click queued.

    A link clicked before in this process costs no round trip at all; see _link for the others.
    """
    reason = click_request_reason(method=request.method, user_agent=request.META.get("HTTP_USER_AGENT", ""))
    # Queued before the link is known: the flush drops unknown and expired links anyway.
    _push(_record(kind=Event.Kind.CLICK, token=_key(source, token), request=request, reason=reason, now=now))
    link = _link(source, token)
    if link is None:
        return None
    start, url = link
    return url if start >= _micros(oldest) else None


# ---------------------------------------------------------------------------------------------- flush


def _records(raw: list[bytes]) -> pd.DataFrame:
    frame = pd.DataFrame(json.loads(b"[" + b",".join(raw) + b"]"), columns=_FIELDS)
    frame["occurred_at"] = pd.to_datetime(frame["micros"], unit="us", utc=True)
    frame["user_agent"] = frame["user_agent"].str.slice(0, UA_MAX)
    return frame


def _rows(rows, columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=columns)
    for name in ("sent_at", "created_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


def _opens(records: pd.DataFrame) -> pd.DataFrame:
    opens = records[records["kind"] == Event.Kind.OPEN]
    columns = ["token", "id", "campaign_id", "customer_id", "sent_at", "created_at"]
    rows = _rows(
        Message.objects.filter(token__in=opens["token"].unique().tolist()).values_list(*columns), columns
    ).rename(columns={"id": "message_id"})
    found = opens.merge(rows, on="token")
    found["offer_id"] = pd.array([pd.NA] * len(found), dtype="Int64")
    found["machine_reason"] = found["reason"]
    return found


def _clicks(records: pd.DataFrame) -> pd.DataFrame:
    clicks = records[records["kind"] == Event.Kind.CLICK]
    columns = ["token", "message_id", "offer_id", "is_honeypot", "campaign_id", "customer_id"]
    columns += ["sent_at", "created_at"]
    rows = _rows(
        (
            [_key(source, row["token"]), *(row[name] for name in columns[1:])]
            for source, tokens in _by_source(clicks["token"].unique()).items()
            for row in click_targets(source, tokens)
        ),
        columns,
    )
    found = clicks.merge(rows, on="token")
    found["offer_id"] = found["offer_id"].astype("Int64")
    # The order of campaigns.events.click_machine_reason: honeypot, the request itself, too soon.
    too_soon = found["sent_at"] > found["occurred_at"] - pd.Timedelta(seconds=scanner_seconds())
    found["machine_reason"] = np.select(
        [found["is_honeypot"].astype(bool), found["reason"] != "", too_soon.fillna(False).astype(bool)],
        ["honeypot link", found["reason"], "click too soon after delivery"],
        default="",
    )
    return found


def _not_recorded(events: pd.DataFrame) -> pd.DataFrame:
    """Drop records whose event is already in the database (a retried chunk)."""
    key = ["message_id", "kind", "occurred_at", "ip_hash", "user_agent"]
    existing = pd.DataFrame(
        list(
            Event.objects.filter(
                message_id__in=events["message_id"].unique().tolist(),
                kind__in=events["kind"].unique().tolist(),
                occurred_at__gte=events["occurred_at"].min().to_pydatetime(),
                occurred_at__lte=events["occurred_at"].max().to_pydatetime(),
            ).values_list(*key)
        ),
        columns=key,
    )
    if existing.empty:
        return events
    existing["occurred_at"] = pd.to_datetime(existing["occurred_at"], utc=True)
    existing["message_id"] = existing["message_id"].astype(events["message_id"].dtype)
    marked = events.merge(existing.drop_duplicates(), on=key, how="left", indicator=True)
    return marked[marked["_merge"] == "left_only"].drop(columns="_merge")


def _events(raw: list[bytes]) -> pd.DataFrame:
    records = _records(raw)
    parts = [part for part in (_opens(records), _clicks(records)) if not part.empty]
    if not parts:
        return pd.DataFrame()
    found = pd.concat(parts, ignore_index=True)
    oldest = found["occurred_at"] - pd.Timedelta(days=getattr(settings, "TRACKING_TOKEN_DAYS", 365))
    found = found[found["sent_at"].fillna(found["created_at"]) >= oldest]
    if found.empty:
        return found
    found = _not_recorded(found)
    return pd.DataFrame(
        {
            "kind": found["kind"],
            "message_id": found["message_id"].astype("int64"),
            "campaign_id": found["campaign_id"].astype("int64"),
            "offer_id": found["offer_id"].astype("Int64"),
            "customer_id": found["customer_id"].astype("int64"),
            "occurred_at": found["occurred_at"],
            "user_agent": found["user_agent"],
            "ip_hash": found["ip_hash"],
            "is_machine": found["machine_reason"] != "",
            "machine_reason": found["machine_reason"].str.slice(0, 100),
            "is_simulated": False,
            "meta": "{}",
        }
    )


def _chunk_write(raw: list[bytes]) -> int:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
        events = _events(raw)
        if events.empty:
            return 0
        bulk_insert(Event, events)
        # Machine traffic never moves a first touch.
        human = events.loc[~events["is_machine"], "message_id"].unique().tolist()
        if human:
            messages_first_touch_refresh(message_ids=human)
        return len(events)


def tracking_buffer_flush(*, chunk: int = CHUNK, max_chunks: int | None = None) -> int:
    """Write buffered opens and clicks to the database; returns the number of events recorded."""
    # A flush in the process that recorded (tests, eager tasks) must see its own records.
    _pusher(settings.REDIS_URL).confirm()
    client = buffer_client()
    take, done = client.register_script(_TAKE), client.register_script(_DONE)
    recorded = chunks = 0
    while max_chunks is None or chunks < max_chunks:
        raw = take(keys=[QUEUE, FLUSHING], args=[chunk])
        if not raw:
            break
        recorded += _chunk_write(raw)
        done(keys=[FLUSHING], args=[raw[0]])
        chunks += 1
    return recorded
