#!/usr/bin/env python3
"""A small stand-in for a company's customer-messages API, for examples/customer-service.yaml.

    python3 examples/customer-api/server.py [--port 8787]

GET  /messages        messy customer messages, as a support inbox would return them
POST /replies         records a reply; answers 201 with {"id": ...}; repeats of the same
                      Idempotency-Key answer 200 with the first reply (no duplicate)
GET  /replies         the replies recorded so far
POST /escalations     records an escalation for a person to follow up
GET  /escalations     the escalations recorded so far
Standard library only; keeps everything in memory.
"""
import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGES = [
    {"id": 1, "email": "  Ada@Example.com ", "text": "My order #1042 arrived broken, I want a refund", "amount": 120.0, "channel": "email"},
    {"id": 2, "email": "bob@example.com", "text": "   ", "amount": 0, "channel": "chat"},
    {"id": 3, "email": "ada@example.com", "text": "My order #1042 arrived broken, I want a refund", "amount": 120.0},
    {"id": 4, "email": "carol@example.com", "text": "Where is my parcel?", "amount": None, "channel": "chat"},
    {"id": 5, "email": "dave@example.com", "text": "Refund please, the TV does not turn on", "amount": 2400.0, "channel": "email"},
    {"id": 6, "email": None, "text": "no sender on this one", "amount": 10},
    {"id": 7, "email": "erin@example.com", "text": "Charged twice!!", "amount": 99999999.0, "channel": "phone"},
]

lock = threading.Lock()
replies = {}
escalations = []


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except json.JSONDecodeError as e:
            self._send(400, {"error": f"body is not JSON: {e}"})
            return None

    def do_GET(self):
        with lock:
            if self.path == "/messages":
                return self._send(200, {"messages": MESSAGES})
            if self.path == "/replies":
                return self._send(200, {"replies": list(replies.values())})
            if self.path == "/escalations":
                return self._send(200, {"escalations": escalations})
        self._send(404, {"error": f"no such path {self.path}"})

    def do_POST(self):
        body = self._body()
        if body is None:
            return
        key = self.headers.get("Idempotency-Key", "")
        with lock:
            if self.path == "/replies":
                if key and key in replies:
                    return self._send(200, replies[key])
                reply = {"id": len(replies) + 1, "idempotency_key": key, **body}
                replies[key or f"anon-{len(replies)}"] = reply
                return self._send(201, reply)
            if self.path == "/escalations":
                escalations.append({"idempotency_key": key, **body})
                return self._send(201, {"id": len(escalations)})
        self._send(404, {"error": f"no such path {self.path}"})

    def log_message(self, fmt, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8787)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"customer API on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
