"""Servers on 127.0.0.1 that receive alerts: an incoming-webhook endpoint (Slack's shape) and an SMTP server
(aiosmtpd). The stream's and the model monitoring's tests deliver to them through the real senders."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from testsupport.net import free_port


class Webhook:
    """An incoming-webhook endpoint on 127.0.0.1 that records the JSON it receives; it can be made slow (each
    request waits until `release` is set) or failing (answers 500)."""

    def __init__(self):
        self.received: list[dict] = []
        self.release = threading.Event()
        self.release.set()
        self.fail = False
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.release.wait(30)
                if hook.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                hook.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        """The alert key (`alert_key`) of each message received: its anomaly id, /confirmed, /retracted."""
        out = []
        for m in self.received:
            body = m["blocks"][1]["text"]["text"]
            anomaly_id = body.split("anomaly id: ", 1)[1].split("\n")[0].split("  ")[0]
            status = m["text"].split(":", 1)[0].lower()
            out.append(anomaly_id + (f"/{status}" if status in ("retracted", "confirmed") else ""))
        return out

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def smtp_recorder() -> Iterator[tuple]:
    """(controller, handler): an SMTP server on 127.0.0.1:controller.port; handler.messages holds what it received
    (email.message.Message objects)."""
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.messages: list = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            from email import message_from_bytes

            self.messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()
