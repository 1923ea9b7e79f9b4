#!/usr/bin/env python3
"""An application's webhook endpoint, for tests/integration/webhooks.sh: it
verifies each delivery as the Standard Webhooks specification says (the
whsec_ secret, HMAC-SHA256 of "id.timestamp.body", a timestamp within five
minutes) with Python's own hmac, and records what it got, one JSON line per
request. Standard library only.

    python3 webhook_receiver.py <port> <secret> <log file>

POST /_mode/ok | /_mode/fail/<n> (answer 500 to the next n) | /_mode/down (503)
"""
import base64
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, SECRET, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3]
KEY = base64.b64decode(SECRET[len("whsec_"):])
mode = {"fail": 0, "down": False}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path.startswith("/_mode/"):
            parts = self.path.split("/")
            mode["down"] = parts[2] == "down"
            mode["fail"] = int(parts[3]) if parts[2] == "fail" else 0
            return self.answer(200)
        msg_id = self.headers.get("webhook-id", "")
        ts = self.headers.get("webhook-timestamp", "0")
        want = base64.b64encode(hmac.new(KEY, ("%s.%s." % (msg_id, ts)).encode() + body, hashlib.sha256).digest()).decode()
        sigs = [s.split(",", 1)[1] for s in self.headers.get("webhook-signature", "").split(" ") if s.startswith("v1,")]
        valid = any(hmac.compare_digest(s, want) for s in sigs) and abs(time.time() - int(ts)) < 300
        status = 503 if mode["down"] else 500 if mode["fail"] > 0 else 200 if valid else 401
        if mode["fail"] > 0 and not mode["down"]:
            mode["fail"] -= 1
        event = json.loads(body) if valid else None
        with open(LOG, "a") as f:
            f.write(json.dumps({"id": msg_id, "valid": valid, "status": status,
                                "type": event and event["type"], "data": event and event["data"]}) + "\n")
        self.answer(status)


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
