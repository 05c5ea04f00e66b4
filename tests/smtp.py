"""A real SMTP server (aiosmtpd) on a free loopback port, with scripted answers per recipient."""

from __future__ import annotations

import email
import socket
import threading
from collections import defaultdict, deque

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    def __init__(self):
        self.messages: list[email.message.Message] = []
        self.envelopes: list[tuple[str, list[str], bytes]] = []  # (MAIL FROM, RCPT TOs, DATA) as received
        self.script: dict[str, deque[str]] = defaultdict(deque)  # recipient -> queued SMTP answers
        self.on_data = None  # called with each accepted message, in the server's thread
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            answers = self.script.get(address)
            if answers:
                return answers.popleft()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        parsed = email.message_from_bytes(envelope.content)
        if self.on_data is not None:
            self.on_data(parsed)
        with self.lock:
            self.messages.append(parsed)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted"

    def to(self, address: str) -> list[email.message.Message]:
        return [m for m in self.messages if m["To"] == address]

    def count_by_recipient(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for m in self.messages:
            counts[m["To"]] += 1
        return dict(counts)


class SMTPServer:
    def __init__(self):
        self.recorder = Recorder()
        self.port = free_port()
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SMTPServer:
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()
