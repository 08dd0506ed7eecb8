"""A tiny OpenAI-compatible chat server on 127.0.0.1 (standard library), with scripted faults."""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIGITS = {"one": "1", "two": "2", "three": "3", "four": "4"}


class JudgeServer:
    """Says ``[[YES]]`` when the request's Answer 1 equals its Answer 2 (case-folded) or is its digit
    (``4`` for ``four``, which no string rule accepts), else ``[[NO]]``.

    Attributes:
        mode: ``ok``, ``garbage`` (a non-JSON body), ``error`` (HTTP 503), ``noverdict`` (a reply
            without YES/NO), ``parity`` (YES when the answer's CRC32 is odd).
        delay: Seconds each request sleeps first (a slow server).
        fail_first: The first N requests get HTTP 503 (then ``mode`` applies).
        requests: Requests served; ``in_flight_max``: most requests handled at once.
    """

    def __init__(self, mode: str = "ok", delay: float = 0.0, fail_first: int = 0) -> None:
        self.mode, self.delay, self.fail_first = mode, delay, fail_first
        self.requests, self.in_flight, self.in_flight_max = 0, 0, 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests += 1
                    n = outer.requests
                    outer.in_flight += 1
                    outer.in_flight_max = max(outer.in_flight_max, outer.in_flight)
                try:
                    time.sleep(outer.delay)
                    self._answer(body, n)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def _answer(self, body: dict, n: int) -> None:
                if n <= outer.fail_first or outer.mode == "error":
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                text = body["messages"][-1]["content"]
                a1 = re.search(r"Answer 1: (.*)", text).group(1).strip().lower()
                a2 = re.search(r"Answer 2: (.*)", text).group(1).strip().lower()
                same = a1 == a2 or DIGITS.get(a2) == a1
                if outer.mode == "parity":  # mixed verdicts for random text (a random policy's completions)
                    same = zlib.crc32(a1.encode()) % 2 == 1
                reply = "They match. [[YES]]" if same else "Different. [[NO]]"
                if outer.mode == "noverdict":
                    reply = "I cannot tell."
                payload = (
                    b"<html>502 Bad Gateway</html>"
                    if outer.mode == "garbage"
                    else json.dumps(
                        {"choices": [{"message": {"role": "assistant", "content": reply}}]}
                    ).encode()
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The ``/v1`` root."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def closed_port_url() -> str:
    """A loopback URL nobody listens on (a port bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
