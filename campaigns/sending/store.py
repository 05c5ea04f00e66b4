"""Store each composed chunk's offers and links, then hand its emails to the courier.

In a thread with its own database connection, so that PostgreSQL writes one chunk (the most costly
statements of a send: rows, their indexes and foreign-key checks) while the caller scores and renders
the next. An email still goes out only after its offers and links are stored.

That connection sees only committed rows, so the thread is used on PostgreSQL when the caller holds no
transaction (a Celery task); otherwise (SQLite, a caller inside atomic()) chunks are stored in the
caller's thread, in the same order.
"""

from __future__ import annotations

import logging
import queue
import threading

from django.db import connection, transaction

from .compose import links_store, offers_save
from .deliver import Courier

log = logging.getLogger(__name__)


class Store:
    def __init__(self, courier: Courier, depth: int = 1):
        self.courier = courier
        self.threaded = connection.vendor == "postgresql" and not connection.in_atomic_block
        self.chunks: queue.Queue = queue.Queue(maxsize=depth)  # bounded: composing waits for the database
        self.error: BaseException | None = None
        self.stopped = False  # set when the caller is interrupted: nothing more goes to the courier
        self.thread = threading.Thread(target=self._run, name="xsell-store", daemon=True)

    def __enter__(self) -> Store:
        if self.threaded:
            self.thread.start()
        return self

    def put(self, offers: dict, links: list[tuple], ready: list) -> None:
        """Store a chunk (offers by message, rows of its other links, its emails), then deliver it."""
        if self.error is not None:
            raise self.error
        if self.threaded:
            self.chunks.put((offers, links, ready))
        else:
            self._store(offers, links, ready)

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.threaded:
            try:
                self.chunks.put(None)  # the chunks already composed are stored and delivered first
                self.thread.join()
            except BaseException:
                # Interrupted while waiting (a task's time limit): hand the courier nothing more, and let
                # the thread finish before the courier's own exit, so that exit sees every email it got.
                self.stopped = True
                self.chunks.put(None)
                self.thread.join()
                raise
        if self.error is not None and self.error is not exc:  # put() may have raised it already
            if exc_type is None:
                raise self.error
            log.error("storing a chunk failed too", exc_info=self.error)  # the caller's error goes on

    def _run(self) -> None:
        try:
            while (chunk := self.chunks.get()) is not None:
                if self.error is None and not self.stopped:  # else drain: the caller raises or has raised
                    try:
                        self._store(*chunk)
                    except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                        # The chunk's messages stay "sending": swept to "uncertain", never resent.
                        self.error = exc
        finally:
            connection.close()  # this thread's own

    def _store(self, offers: dict, links: list[tuple], ready: list) -> None:
        with transaction.atomic():  # one commit for both
            offers_save(offers)  # before any email with their links goes out
            links_store(links)
        self.courier.send(ready)
