"""Real receivers on loopback for notification tests: an MLLP listener that
acknowledges HL7 v2 messages like a RIS, and an HTTP server that takes webhooks."""

from __future__ import annotations

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

START, END = b"\x0b", b"\x1c\x0d"


class _MllpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: MllpListener = self.server  # type: ignore[assignment]
        buffer = b""
        while True:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            buffer += chunk
            while END in buffer:
                frame, buffer = buffer.split(END, 1)
                message = frame.lstrip(START).decode("utf-8")
                fields = message.split("\r")[0].split("|")
                control_id = fields[9] if len(fields) > 9 else ""
                with server.lock:
                    server.messages.append(message)
                code = server.answer
                ack = (f"MSH|^~\\&|RIS|HOSPITAL|AINODE|AINODE|20260101000000||ACK^R01^ACK|A{control_id}|P|2.5.1\r"
                       f"MSA|{code}|{control_id}\r")
                self.request.sendall(START + ack.encode() + END)


class MllpListener(socketserver.ThreadingTCPServer):
    """Accepts MLLP connections, keeps every message, answers MSA ``answer`` (AA)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _MllpHandler)
        self.messages: list[str] = []
        self.answer = "AA"
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        server: WebhookServer = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with server.lock:
            server.posts.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


class WebhookServer(ThreadingHTTPServer):
    """Takes JSON POSTs on loopback and keeps them."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _WebhookHandler)
        self.posts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/ainode"
