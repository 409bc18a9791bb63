"""Tiny HTTP servers on loopback addresses, standing in for agents (directory and gateway tests)."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

# (method, path, body) -> (status, JSON-able answer)
Answer = Callable[[str, str, bytes], "tuple[int, object]"]
# the headers of the last request each stub (by ip) received
LAST_HEADERS: dict[str, dict[str, str]] = {}


@contextmanager
def http_stubs(port: int, answers: dict[str, Answer]) -> Iterator[None]:
    """Serve ``answers[ip]`` on ``ip:port`` for each ip (127.0.0.x) until the block ends."""
    servers = []
    for ip, answer in answers.items():
        class Stub(BaseHTTPRequestHandler):
            def _answer(self, answer=answer):
                n = int(self.headers.get("content-length") or 0)
                LAST_HEADERS[self.server.server_address[0]] = {k.lower(): v for k, v in self.headers.items()}
                status, obj = answer(self.command, self.path, self.rfile.read(n))
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *a):
                pass

        srv = ThreadingHTTPServer((ip, port), Stub)
        # shutdown() waits for serve_forever's next poll: 0.5 s per stub by default
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(srv)
    try:
        yield
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
