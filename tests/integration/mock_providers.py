#!/usr/bin/env python3
"""Test servers that follow the documented APIs and status values of LND REST,
Core Lightning REST (clnrest), BTCPay Greenfield and Stripe PaymentIntents
(see ../shared/reference/protocols.md §5), for the worker's adapter tests and
the reconciler benchmark. Standard library only; asyncio with a small HTTP/1.1
parser and keep-alive, so that it serves thousands of requests a second.

    python3 mock_providers.py <port> [--bench]

Control endpoints (no auth), for the tests to play the payer and the network:
    POST /_control/settle/<id>     paid in full (id: payment hash or provider id)
    POST /_control/expire/<id>     past expiry unpaid
    POST /_control/paidlate/<id>   BTCPay: Expired + PaidLate
    POST /_control/down            answer 503 to everything but /_control
    POST /_control/up
    GET  /_control/stats           {"requests": n, "invoices": n}
With --bench, an unknown LND payment hash is an OPEN invoice (the benchmark
seeds invoices in the database only).
"""
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from urllib.parse import parse_qsl

MACAROON = "0201036c6e64"
RUNE = "test-rune"
BTCPAY_KEY = "btcpay-key"
STRIPE_KEY = "sk_test_payledger"
STORE = "Store1"

invoices = {}      # id -> dict(kind, state, amount_msat, ...)
by_label = {}      # CLN label -> payment hash
idempotency = {}   # Stripe Idempotency-Key -> response
stats = {"requests": 0}
down = False
bench = "--bench" in sys.argv


def new_hash():
    return hashlib.sha256(os.urandom(32)).hexdigest()


def respond(status, body):
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "OK")
    return status, reason, data


def lnd(method, path, headers, body):
    if headers.get("grpc-metadata-macaroon") != MACAROON:
        return respond(401, {"code": 16, "message": "verification failed: signature mismatch"})
    if method == "POST" and path == "/v1/invoices":
        req = json.loads(body or b"{}")
        h = new_hash()
        invoices[h] = {"kind": "lnd", "state": "OPEN", "amount_msat": int(req["value_msat"]),
                       "preimage": os.urandom(32)}
        return respond(200, {"r_hash": base64.b64encode(bytes.fromhex(h)).decode(),
                             "payment_request": "lnbcrt" + h[:20], "add_index": str(len(invoices)),
                             "payment_addr": base64.b64encode(os.urandom(32)).decode()})
    if method == "GET" and path.startswith("/v1/invoice/"):
        h = path.rsplit("/", 1)[1]
        inv = invoices.get(h)
        if inv is None:
            if bench:
                return respond(200, {"state": "OPEN", "amt_paid_msat": "0", "settled": False})
            return respond(404, {"code": 5, "message": "unable to locate invoice"})
        paid = inv["state"] == "SETTLED"
        return respond(200, {"state": inv["state"], "settled": paid,
                             "value_msat": str(inv["amount_msat"]),
                             "amt_paid_msat": str(inv["amount_msat"] if paid else 0),
                             "r_preimage": base64.b64encode(inv["preimage"]).decode()})
    return respond(404, {"code": 5, "message": "Not Found"})


def cln(method, path, headers, body):
    if headers.get("rune") != RUNE:
        return respond(401, {"code": 1501, "message": "Not authorized: Not derived from master"})
    req = json.loads(body or b"{}")
    if path == "/v1/invoice":
        if req["label"] in by_label:
            return respond(500, {"code": 900, "message": "Duplicate label '%s'" % req["label"]})
        h = new_hash()
        by_label[req["label"]] = h
        invoices[h] = {"kind": "cln", "state": "unpaid", "amount_msat": int(req["amount_msat"]),
                       "preimage": os.urandom(32), "expires_at": int(time.time()) + int(req.get("expiry", 3600))}
        return respond(200, {"payment_hash": h, "bolt11": "lnbcrt" + h[:20],
                             "expires_at": invoices[h]["expires_at"],
                             "payment_secret": os.urandom(32).hex()})
    if path == "/v1/listinvoices":
        h = req.get("payment_hash") or by_label.get(req.get("label"))
        inv = invoices.get(h)
        if inv is None:
            return respond(200, {"invoices": []})
        out = {"payment_hash": h, "status": inv["state"], "amount_msat": inv["amount_msat"],
               "bolt11": "lnbcrt" + h[:20], "expires_at": inv["expires_at"]}
        if inv["state"] == "paid":
            out["amount_received_msat"] = inv["amount_msat"]
            out["payment_preimage"] = inv["preimage"].hex()
        return respond(200, {"invoices": [out]})
    return respond(404, {"code": -32601, "message": "Unknown command"})


def btcpay(method, path, headers, body):
    if headers.get("authorization") != "token " + BTCPAY_KEY:
        return respond(401, {"code": "unauthenticated", "message": "Authentication is required"})
    base = "/api/v1/stores/%s/invoices" % STORE
    if not path.startswith(base):
        return respond(404, {"code": "store-not-found", "message": "The store was not found"})
    if method == "POST" and path == base:
        req = json.loads(body or b"{}")
        i = "BT" + new_hash()[:20]
        now = int(time.time())
        exp = now + 60 * int(req.get("checkout", {}).get("expirationMinutes", 15))
        invoices[i] = {"kind": "btcpay", "state": "New", "extra": "None",
                       "amount_msat": int(req["amount"]) * 1000, "exp": exp}
        return respond(200, {"id": i, "status": "New", "additionalStatus": "None", "amount": req["amount"],
                             "currency": req.get("currency"), "createdTime": now, "expirationTime": exp,
                             "monitoringExpiration": exp + 3600, "checkoutLink": "https://btcpay.test/i/" + i})
    i = path[len(base) + 1:]
    inv = invoices.get(i)
    if method == "GET" and inv is not None:
        return respond(200, {"id": i, "status": inv["state"], "additionalStatus": inv["extra"],
                             "amount": str(inv["amount_msat"] // 1000), "currency": "SATS"})
    return respond(404, {"code": "invoice-not-found", "message": "The invoice was not found"})


def stripe(method, path, headers, body):
    if headers.get("authorization") != "Bearer " + STRIPE_KEY:
        return respond(401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}})
    if method == "POST" and path == "/v1/payment_intents":
        key = headers.get("idempotency-key")
        if key in idempotency:
            return idempotency[key]
        form = dict(parse_qsl(body.decode()))
        i = "pi_" + new_hash()[:24]
        invoices[i] = {"kind": "stripe", "state": "requires_payment_method", "amount_msat": int(form["amount"])}
        r = respond(200, {"id": i, "object": "payment_intent", "amount": int(form["amount"]),
                          "currency": form["currency"], "status": "requires_payment_method",
                          "client_secret": i + "_secret_x"})
        if key:
            idempotency[key] = r
        return r
    if method == "GET" and path.startswith("/v1/payment_intents/"):
        i = path.rsplit("/", 1)[1]
        inv = invoices.get(i)
        if inv is None:
            return respond(404, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                                           "message": "No such payment_intent: '%s'" % i}})
        return respond(200, {"id": i, "object": "payment_intent", "status": inv["state"],
                             "amount": inv["amount_msat"],
                             "amount_received": inv["amount_msat"] if inv["state"] == "succeeded" else 0})
    return respond(404, {"error": {"type": "invalid_request_error", "message": "Unrecognized request URL"}})


def control(method, path):
    global down
    parts = path.split("/")
    action = parts[2] if len(parts) > 2 else ""
    target = parts[3] if len(parts) > 3 else ""
    if action == "stats":
        return respond(200, {"requests": stats["requests"], "invoices": len(invoices)})
    if action in ("down", "up"):
        down = action == "down"
        return respond(200, {"down": down})
    inv = invoices.get(target)
    if inv is None:
        return respond(404, {"error": "no such invoice"})
    paid = {"lnd": "SETTLED", "cln": "paid", "btcpay": "Settled", "stripe": "succeeded"}
    expired = {"lnd": "CANCELED", "cln": "expired", "btcpay": "Expired", "stripe": "canceled"}
    if action == "settle":
        inv["state"] = paid[inv["kind"]]
    elif action == "expire":
        inv["state"] = expired[inv["kind"]]
    elif action == "paidlate" and inv["kind"] == "btcpay":
        inv["state"], inv["extra"] = "Expired", "PaidLate"
    else:
        return respond(400, {"error": "unknown action"})
    return respond(200, {"state": inv["state"]})


def route(method, path, headers, body):
    if path.startswith("/_control/"):
        return control(method, path)
    stats["requests"] += 1
    if down:
        return respond(503, {"message": "down for maintenance"})
    if path.startswith("/v1/invoices") or path.startswith("/v1/invoice/"):
        return lnd(method, path, headers, body)
    if path in ("/v1/invoice", "/v1/listinvoices"):
        return cln(method, path, headers, body)
    if path.startswith("/api/v1/stores/"):
        return btcpay(method, path, headers, body)
    if path.startswith("/v1/payment_intents"):
        return stripe(method, path, headers, body)
    return respond(404, {"message": "Not Found"})


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4:head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            try:
                status, reason, data = route(method, target.split("?", 1)[0], headers, body)
            except Exception as e:  # a test server: say what broke
                status, reason, data = respond(400, {"message": "bad request: %s" % e})
            self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                 % (status, reason.encode(), len(data)) + data)
            if headers.get("connection", "").lower() == "close":
                self.transport.close()
                return


async def main():
    port = int(sys.argv[1])
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
