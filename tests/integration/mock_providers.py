#!/usr/bin/env python3
"""Test servers that follow the documented APIs and status values of LND REST,
Core Lightning REST (clnrest), BTCPay Greenfield and Stripe (PaymentIntents,
Refunds), for the worker's adapter tests and the reconciler benchmark (see
../shared/reference/protocols.md §5). asyncio with a small HTTP/1.1 parser
and keep-alive, so that it serves thousands of requests a second.

The LND and Core Lightning servers are two nodes of one small network: their
invoices are real BOLT11s signed with each node's key (the `bolt11` package
LNbits uses, so run this with LNbits' Python), and either node pays the
other's invoices, or any other BOLT11 (then the money leaves the network).

    <LNbits venv>/bin/python mock_providers.py <port> [--bench]

LNURL-pay (LUD-06) and Lightning Addresses (LUD-16):
     GET /.well-known/lnurlp/<user> and its callback ?amount=<msat>. A user
     "<node>-<name>" is paid by an invoice of that node (lnd, cln); "liar"
     answers an invoice for another amount, "plain" one with a description
     instead of the metadata's hash, "closed" a LUD-06 ERROR.
LND: POST /v1/invoices, POST /v2/invoices/hodl (hold invoices: a payment to one is
     ACCEPTED, its HTLC held, until POST /v2/invoices/settle with its preimage
     or POST /v2/invoices/cancel), GET /v1/invoice/{r_hash hex}, GET /v1/getinfo,
     POST /v2/router/send and GET /v2/router/track/{payment_hash base64url}
     (grpc-gateway streams: one JSON object a line, {"result": Payment};
     an error before the first one is the HTTP status of its gRPC code).
CLN: POST /v1/invoice, /v1/listinvoices, /v1/delinvoice, /v1/pay, /v1/listpays
     (JSON-RPC errors as HTTP 500 {"code", "message"}).

Control endpoints (no auth), for the tests to play the payer and the network:
    POST /_control/settle/<id>     paid in full (id: payment hash or provider id);
                                   a hold invoice's payment is held (ACCEPTED)
    POST /_control/overpay/<id>    paid twice the amount (BOLT 4 allows it)
    POST /_control/expire/<id>     past expiry unpaid
    POST /_control/paidlate/<id>   BTCPay: Expired + PaidLate
    POST /_control/network/<mode>  how payments go: ok (default), fail (no
                                   route), hold (in flight until resolved),
                                   slow (the pay call answers after 30 s)
    POST /_control/resolve/<hash>/<ok|fail>   end a held payment
    POST /_control/gateway         {"url", "admin_key"}: an LNbits wallet
                                   through which the nodes pay invoices that
                                   are not theirs (the payee really paid, the
                                   preimage real)
    POST /_control/down            answer 503 to everything but /_control
    POST /_control/up
    GET  /_control/stats           {"requests": n, "invoices": n}
    GET  /_control/payments        every outgoing payment, by node
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

try:
    import bolt11
    from bolt11 import Bolt11, MilliSatoshi, Tags, TagChar
except ImportError:  # the benchmark needs no BOLT11
    bolt11 = None

MACAROON = "0201036c6e64"          # an invoice macaroon: invoices only
ADMIN_MACAROON = "0201036c6e64ad"  # an admin macaroon: invoices and payments
RUNE = "test-rune"                 # read and invoice
PAY_RUNE = "test-pay-rune"         # also pay
BTCPAY_KEY = "btcpay-key"
STRIPE_KEY = "sk_test_payledger"
STORE = "Store1"
# each node's secret key: its invoices are signed with it
NODE_KEYS = {"lnd": hashlib.sha256(b"payledger mock lnd").hexdigest(),
             "cln": hashlib.sha256(b"payledger mock cln").hexdigest()}

invoices = {}      # id -> dict(kind, state, amount_msat, ...)
by_label = {}      # CLN label -> payment hash
payments = {}      # (node, payment hash) -> outgoing payment
refunds = {}       # Stripe refund id -> refund
idempotency = {}   # Stripe Idempotency-Key -> response
stats = {"requests": 0}
HEIGHT = 870000    # the LND node's block height
down = False
network = {"mode": "ok"}
gateway = {}       # the LNbits wallet paying other networks' invoices (url, admin_key)
HOP_CLTV = 40      # the CLTV delta of the one hop of a route, on top of the payee's final one
bench = "--bench" in sys.argv


def respond(status, body):
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict",
              500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "OK")
    return status, reason, data


def new_invoice(node, amount_msat, memo, expiry, description_hash=None, hold_hash=None, cltv=None):
    """A payable invoice of a node: a real BOLT11 signed with its key. A
    hold invoice (hold_hash) is for a payment hash whose preimage the node
    does not know: a payment to it is held (ACCEPTED) until settled."""
    preimage = None if hold_hash else os.urandom(32)
    h = hold_hash or hashlib.sha256(preimage).hexdigest()
    now = int(time.time())
    tags = Tags()
    if description_hash:
        tags.add(TagChar.description_hash, description_hash)
    else:
        tags.add(TagChar.description, memo or "")
    tags.add(TagChar.expire_time, expiry)
    if cltv:
        tags.add(TagChar.min_final_cltv_expiry, cltv)
    tags.add(TagChar.payment_secret, os.urandom(32).hex())
    tags.add(TagChar.payment_hash, h)
    pr = bolt11.encode(Bolt11(currency="bc", amount_msat=MilliSatoshi(amount_msat), date=now, tags=tags),
                       NODE_KEYS[node])
    invoices[h] = {"kind": node, "state": "OPEN" if node == "lnd" else "unpaid", "amount_msat": amount_msat,
                   "preimage": preimage, "bolt11": pr, "created": now, "expires_at": now + expiry,
                   "hold": bool(hold_hash), "cltv": cltv or 80}
    return h, invoices[h]


# -------------------------------------------------------------------------
# The network: a node pays a BOLT11
# -------------------------------------------------------------------------

def fee_for(amount_msat):
    """What a route costs: 1 sat plus 0.1 %."""
    return 1000 + amount_msat // 1000


def start_payment(node, payreq, fee_limit, cltv_limit=None):
    """Decode, check and start paying; returns (payment, None) or (None, (code, message))."""
    try:
        inv = bolt11.decode(payreq)
    except Exception as e:
        return None, ("invalid", "invalid payment request: %s" % e)
    if inv.currency != "bc":
        return None, ("invalid", "invoice not for current active network 'mainnet'")
    if inv.has_expired():
        return None, ("expired", "invoice expired. Valid until %s" % time.ctime(inv.date + inv.expiry))
    if not inv.amount_msat:
        return None, ("invalid", "amount must be specified when paying a zero amount invoice")
    h = inv.payment_hash
    # (a route needs the payee's final CLTV delta and its hop's: LND finds
    # none within a cltv_limit below that, and the payment fails NO_ROUTE)
    too_long = cltv_limit is not None and cltv_limit < (getattr(inv, "min_final_cltv_expiry", None) or 18) + HOP_CLTV
    old = payments.get((node, h))
    if old is not None and old["status"] != "FAILED":
        return None, ("exists", old)
    amount = int(inv.amount_msat)
    p = {"node": node, "payment_hash": h, "bolt11": payreq, "value_msat": amount, "fee_msat": 0,
         "status": "IN_FLIGHT", "failure_reason": "FAILURE_REASON_NONE", "preimage": None,
         "created": time.time(), "attempts": (old or {}).get("attempts", 0) + 1, "done": asyncio.Event()}
    payments[(node, h)] = p
    fee = fee_for(amount)
    if network["mode"] == "fail" or fee > fee_limit or too_long:
        finish(p, False)
    elif network["mode"] == "ok" or network["mode"] == "slow":
        finish(p, True)
    return p, None


def finish(p, ok):
    """A payment arrives (the payee's invoice is settled when it is one of ours) or fails."""
    if ok:
        target = invoices.get(p["payment_hash"])
        if target is not None and target["bolt11"] != p["bolt11"]:
            # (a hold invoice of ours wrapping another node's invoice: same
            # hash, but the payee is that other node)
            target = None
        if target is not None and target["kind"] in ("lnd", "cln"):
            if target["state"] not in ("OPEN", "unpaid"):
                ok = False  # a canceled, deleted or paid invoice takes no HTLC
            else:
                target["state"] = "SETTLED" if target["kind"] == "lnd" else "paid"
                target["paid_msat"] = p["value_msat"]
                target["paid_at"] = int(time.time())
                p["preimage"] = target["preimage"].hex()
        elif target is None and gateway:
            # paid for real through the LNbits gateway (an internal payment
            # there: the preimage is the payee's)
            ok, p["preimage"] = gateway_pay(p["bolt11"])
        elif target is None:
            p["preimage"] = hashlib.sha256(p["payment_hash"].encode()).hexdigest()
    if ok:
        p["status"], p["fee_msat"] = "SUCCEEDED", fee_for(p["value_msat"])
    else:
        p["status"], p["failure_reason"] = "FAILED", "FAILURE_REASON_NO_ROUTE"
    p["done"].set()


def gateway_pay(payreq):
    """Pay a BOLT11 from the LNbits gateway wallet: (paid, preimage)."""
    import urllib.request
    req = urllib.request.Request(gateway["url"] + "/api/v1/payments", method="POST",
                                 data=json.dumps({"out": True, "bolt11": payreq}).encode(),
                                 headers={"X-Api-Key": gateway["admin_key"], "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            answer = json.loads(r.read())
    except Exception as e:
        print("gateway: %s" % e, file=sys.stderr)
        return False, None
    preimage = answer.get("preimage")
    return answer.get("status") == "success" and bool(preimage), preimage


# -------------------------------------------------------------------------
# LND REST (lnrpc, routerrpc and invoicesrpc through grpc-gateway)
# -------------------------------------------------------------------------

def b64(h):
    return base64.b64encode(bytes.fromhex(h)).decode()


def grpc_error(code, message):
    http = {2: 500, 3: 400, 5: 404, 6: 409, 16: 401}[code]
    return respond(http, {"code": code, "message": message, "details": []})


def lnd_payment(p):
    out = {"payment_hash": p["payment_hash"], "value": str(p["value_msat"] // 1000),
           "value_msat": str(p["value_msat"]), "value_sat": str(p["value_msat"] // 1000),
           "payment_request": p["bolt11"], "status": p["status"],
           "fee": str(p["fee_msat"] // 1000), "fee_sat": str(p["fee_msat"] // 1000),
           "fee_msat": str(p["fee_msat"]), "creation_time_ns": str(int(p["created"] * 1e9)),
           "payment_index": str(list(payments).index(("lnd", p["payment_hash"])) + 1),
           "failure_reason": p["failure_reason"], "htlcs": []}
    out["payment_preimage"] = p["preimage"] or "0" * 64
    return {"result": out}


def lnd_stream(p):
    """The payment's current state, then (while in flight) its final one."""
    async def lines():
        yield lnd_payment(p)
        if p["status"] == "IN_FLIGHT":
            await p["done"].wait()
            yield lnd_payment(p)
    return lines()


def lnd(method, path, query, headers, body):
    mac = headers.get("grpc-metadata-macaroon")
    if mac not in (MACAROON, ADMIN_MACAROON):
        return grpc_error(16, "verification failed: signature mismatch")
    if path.startswith("/v2/router/") and mac != ADMIN_MACAROON:
        return grpc_error(2, "permission denied")
    if method == "POST" and path == "/v1/invoices":
        req = json.loads(body or b"{}")
        h, inv = new_invoice("lnd", int(req["value_msat"]), req.get("memo"), int(req.get("expiry", 86400)))
        return respond(200, {"r_hash": b64(h), "payment_request": inv["bolt11"],
                             "add_index": str(len(invoices)), "payment_addr": base64.b64encode(os.urandom(32)).decode()})
    if method == "GET" and path == "/v1/getinfo":
        return respond(200, {"identity_pubkey": "02" + "ab" * 32, "alias": "payledger-test-lnd",
                             "block_height": HEIGHT, "synced_to_chain": True, "chains": [{"chain": "bitcoin", "network": "mainnet"}]})
    if method == "POST" and path == "/v2/invoices/hodl":
        # invoicesrpc AddHoldInvoice: the hash is given, the preimage unknown
        req = json.loads(body or b"{}")
        try:
            h = base64.b64decode(req.get("hash", "")).hex()
        except Exception:
            h = ""
        if len(h) != 64:
            return grpc_error(2, "invalid hash")
        if h in invoices:
            return grpc_error(2, "invoice with payment hash already exists")
        _, inv = new_invoice("lnd", int(req.get("value_msat") or 0), req.get("memo"), int(req.get("expiry") or 86400),
                             hold_hash=h, cltv=int(req.get("cltv_expiry") or 80))
        return respond(200, {"payment_request": inv["bolt11"], "add_index": str(len(invoices)),
                             "payment_addr": base64.b64encode(os.urandom(32)).decode()})
    if method == "GET" and path.startswith("/v1/invoice/"):
        h = path.rsplit("/", 1)[1]
        inv = invoices.get(h)
        if inv is None or inv["kind"] != "lnd":
            if bench:
                return respond(200, {"state": "OPEN", "amt_paid_msat": "0", "settled": False})
            return grpc_error(5, "unable to locate invoice")
        paid = inv["state"] == "SETTLED"
        return respond(200, {"memo": "", "r_hash": b64(h), "payment_request": inv["bolt11"],
                             "state": inv["state"], "settled": paid,
                             "value_msat": str(inv["amount_msat"]),
                             "amt_paid_msat": str(inv.get("paid_msat", 0) if paid else 0),
                             "r_preimage": base64.b64encode(inv["preimage"] or b"").decode(),
                             "cltv_expiry": str(inv["cltv"]), "is_keysend": False,
                             "htlcs": [inv["htlc"]] if inv.get("htlc") else []})
    if method == "POST" and path == "/v2/invoices/settle":
        # invoicesrpc SettleInvoice: the preimage of a held payment's hash
        try:
            preimage = base64.b64decode(json.loads(body or b"{}").get("preimage", ""))
        except Exception:
            preimage = b""
        inv = invoices.get(hashlib.sha256(preimage).hexdigest()) if len(preimage) == 32 else None
        if inv is None or inv["kind"] != "lnd":
            return grpc_error(2, "unable to locate invoice")
        if inv["state"] != "ACCEPTED":
            return grpc_error(2, {"OPEN": "invoice still open", "SETTLED": "invoice already settled",
                                  "CANCELED": "invoice already canceled"}[inv["state"]])
        inv["state"], inv["preimage"] = "SETTLED", preimage
        inv["paid_msat"], inv["paid_at"] = int(inv["htlc"]["amt_msat"]), int(time.time())
        inv["htlc"]["state"] = "SETTLED"
        return respond(200, {})
    if method == "POST" and path == "/v2/invoices/cancel":
        h = base64.b64decode(json.loads(body or b"{}").get("payment_hash", "")).hex()
        inv = invoices.get(h)
        if inv is None or inv["kind"] != "lnd":
            return grpc_error(2, "unable to locate invoice")
        if inv["state"] == "SETTLED":
            return grpc_error(2, "invoice already settled")
        inv["state"] = "CANCELED"   # (cancelling a canceled invoice is no error)
        return respond(200, {})
    if method == "POST" and path == "/v2/router/send":
        req = json.loads(body or b"{}")
        if int(req.get("timeout_seconds", 0)) <= 0:
            return grpc_error(3, "timeout_seconds must be specified")
        limit = int(req.get("fee_limit_msat") or 0) or int(req.get("fee_limit_sat") or 0) * 1000
        p, err = start_payment("lnd", req.get("payment_request", ""), limit,
                               int(req["cltv_limit"]) if req.get("cltv_limit") else None)
        if err is not None:
            if err[0] == "exists":
                return grpc_error(6, "invoice is already paid" if err[1]["status"] == "SUCCEEDED"
                                  else "payment is in transition")
            return grpc_error(2 if err[0] == "expired" else 3, err[1])
        if network["mode"] == "slow":
            return ("slow", lnd_stream(p))
        return ("stream", lnd_stream(p))
    if method == "GET" and path.startswith("/v2/router/track/"):
        try:
            h = base64.urlsafe_b64decode(path.rsplit("/", 1)[1] + "==").hex()
        except Exception:
            return grpc_error(3, "invalid payment hash")
        p = payments.get(("lnd", h))
        if p is None:
            return grpc_error(5, "payment isn't initiated")
        return ("stream", lnd_stream(p))
    return grpc_error(5, "Not Found")


# -------------------------------------------------------------------------
# Core Lightning clnrest (JSON-RPC commands as POST /v1/<method>)
# -------------------------------------------------------------------------

def rpc_error(code, message, data=None):
    body = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return respond(500, body)


def cln_invoice(h, inv):
    out = {"label": inv["label"], "payment_hash": h, "status": inv["state"], "amount_msat": inv["amount_msat"],
           "bolt11": inv["bolt11"], "expires_at": inv["expires_at"], "description": inv.get("memo", "")}
    if inv["state"] == "paid":
        out["amount_received_msat"] = inv["paid_msat"]
        out["payment_preimage"] = inv["preimage"].hex()
        out["paid_at"] = inv["paid_at"]
    return out


def cln_pay(p):
    out = {"payment_hash": p["payment_hash"], "status": {"SUCCEEDED": "complete", "FAILED": "failed"}.get(p["status"], "pending"),
           "created_at": p["created"], "bolt11": p["bolt11"], "amount_msat": p["value_msat"],
           "amount_sent_msat": p["value_msat"] + p["fee_msat"], "number_of_parts": 1}
    if p["status"] == "SUCCEEDED":
        out["preimage"] = p["preimage"]
    return out


def cln(method, path, query, headers, body):
    rune = headers.get("rune")
    if rune not in (RUNE, PAY_RUNE):
        return rpc_error(1501, "Not authorized: Not derived from master")
    req = json.loads(body or b"{}")
    if path == "/v1/invoice":
        if req["label"] in by_label:
            return rpc_error(900, "Duplicate label '%s'" % req["label"])
        h, inv = new_invoice("cln", int(req["amount_msat"]), req.get("description"), int(req.get("expiry", 604800)))
        inv["label"], inv["memo"] = req["label"], req.get("description", "")
        by_label[req["label"]] = h
        return respond(200, {"payment_hash": h, "bolt11": inv["bolt11"], "expires_at": inv["expires_at"],
                             "payment_secret": os.urandom(32).hex(), "created_index": len(invoices)})
    if path == "/v1/listinvoices":
        h = req.get("payment_hash") or by_label.get(req.get("label"))
        inv = invoices.get(h)
        if inv is None or inv["kind"] != "cln":
            return respond(200, {"invoices": []})
        return respond(200, {"invoices": [cln_invoice(h, inv)]})
    if path == "/v1/delinvoice":
        h = by_label.get(req.get("label"))
        if h is None:
            return rpc_error(905, "Unknown invoice")
        inv = invoices[h]
        if inv["state"] != req.get("status"):
            return rpc_error(906, "Invoice status is %s not %s" % (inv["state"], req.get("status")),
                             {"current_status": inv["state"], "expected_status": req.get("status")})
        out = cln_invoice(h, inv)
        del by_label[req["label"]]
        del invoices[h]
        return respond(200, out)
    if path == "/v1/pay":
        if rune != PAY_RUNE:
            return rpc_error(1502, "Not permitted: method is not equal to invoice")
        p, err = start_payment("cln", req.get("bolt11", ""), int(req.get("maxfee", 1 << 62)))
        if err is not None:
            if err[0] == "exists":
                if err[1]["status"] == "SUCCEEDED":
                    return respond(200, {**cln_pay(err[1]), "payment_preimage": err[1]["preimage"], "parts": 1})
                return rpc_error(200, "Already in progress")
            return rpc_error(207 if err[0] == "expired" else -32602, err[1])

        async def outcome():
            if network["mode"] == "slow":
                await asyncio.sleep(30)
            await p["done"].wait()   # pay returns when the payment is over
            if p["status"] == "SUCCEEDED":
                return respond(200, {**cln_pay(p), "payment_preimage": p["preimage"], "parts": 1})
            if p["fee_msat"] == 0 and fee_for(p["value_msat"]) > int(req.get("maxfee", 1 << 62)):
                return rpc_error(206, "Fee exceeds our fee budget: %dmsat > %dmsat"
                                 % (fee_for(p["value_msat"]), int(req["maxfee"])))
            return rpc_error(210, "Ran out of routes to try after 3 attempts: see `paystatus`")
        return outcome()
    if path == "/v1/listpays":
        found = [cln_pay(p) for (node, h), p in payments.items()
                 if node == "cln" and (not req.get("payment_hash") or h == req["payment_hash"])]
        return respond(200, {"pays": found})
    return rpc_error(-32601, "Unknown command '%s'" % path.rsplit("/", 1)[1])


# -------------------------------------------------------------------------
# LNURL-pay (LUD-06, LUD-16)
# -------------------------------------------------------------------------

def lnurl_metadata(user):
    return json.dumps([["text/plain", "Pay to %s" % user],
                       ["text/identifier", "%s@127.0.0.1:%s" % (user, sys.argv[1])]])


def lnurlp(method, path, query):
    parts = path.strip("/").split("/")
    user = parts[2] if path.startswith("/.well-known/") else parts[1]
    if user == "closed":
        return respond(200, {"status": "ERROR", "reason": "this address takes no payments"})
    node = user.split("-", 1)[0]
    if node not in ("lnd", "cln") and user not in ("liar", "plain"):
        return respond(404, {"status": "ERROR", "reason": "no such user"})
    metadata = lnurl_metadata(user)
    if path.startswith("/.well-known/"):
        return respond(200, {"tag": "payRequest", "minSendable": 1000, "maxSendable": 1000000000,
                             "metadata": metadata, "commentAllowed": 0,
                             "callback": "http://127.0.0.1:%s/lnurlp/%s/callback" % (sys.argv[1], user)})
    amount = int(dict(parse_qsl(query)).get("amount", "0"))
    if not 1000 <= amount <= 1000000000:
        return respond(200, {"status": "ERROR", "reason": "amount out of range"})
    dh = hashlib.sha256(metadata.encode()).hexdigest()
    if user == "liar":
        h, inv = new_invoice("lnd", amount + 1000, None, 600, dh)
    elif user == "plain":
        h, inv = new_invoice("lnd", amount, "Pay to plain", 600)
    else:
        h, inv = new_invoice(node, amount, None, 600, dh)
    if node == "cln":
        inv["label"] = "lnurl-" + h[:16]
        by_label[inv["label"]] = h
    return respond(200, {"pr": inv["bolt11"], "routes": []})


# -------------------------------------------------------------------------
# BTCPay Greenfield
# -------------------------------------------------------------------------

def btcpay(method, path, query, headers, body):
    if headers.get("authorization") != "token " + BTCPAY_KEY:
        return respond(401, {"code": "unauthenticated", "message": "Authentication is required"})
    base = "/api/v1/stores/%s/invoices" % STORE
    if not path.startswith(base):
        return respond(404, {"code": "store-not-found", "message": "The store was not found"})
    if method == "POST" and path == base:
        req = json.loads(body or b"{}")
        i = "BT" + os.urandom(10).hex()
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
                             "amount": str(inv.get("paid_msat", inv["amount_msat"]) // 1000), "currency": "SATS"})
    return respond(404, {"code": "invoice-not-found", "message": "The invoice was not found"})


# -------------------------------------------------------------------------
# Stripe (form-encoded requests, Idempotency-Key)
# -------------------------------------------------------------------------

def stripe_error(status, code, message, **extra):
    return respond(status, {"error": {"type": "invalid_request_error", "code": code, "message": message, **extra}})


def intent(i, inv):
    return {"id": i, "object": "payment_intent", "status": inv["state"], "amount": inv["amount_msat"],
            "currency": inv["currency"],
            "amount_received": inv["amount_msat"] if inv["state"] == "succeeded" else 0,
            "cancellation_reason": inv.get("cancellation_reason")}


def stripe(method, path, query, headers, body):
    if headers.get("authorization") != "Bearer " + STRIPE_KEY:
        return respond(401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}})
    key = headers.get("idempotency-key")
    if method == "POST" and key in idempotency:
        return idempotency[key]
    form = dict(parse_qsl(body.decode()))
    if method == "POST" and path == "/v1/payment_intents":
        i = "pi_" + os.urandom(12).hex()
        invoices[i] = {"kind": "stripe", "state": "requires_payment_method", "amount_msat": int(form["amount"]),
                       "currency": form["currency"]}
        r = respond(200, {**intent(i, invoices[i]), "client_secret": i + "_secret_x"})
    elif path.startswith("/v1/payment_intents/"):
        parts = path.split("/")
        i = parts[3]
        inv = invoices.get(i)
        if inv is None or inv["kind"] != "stripe":
            return stripe_error(404, "resource_missing", "No such payment_intent: '%s'" % i, param="intent")
        if method == "GET" and len(parts) == 4:
            return respond(200, intent(i, inv))
        if method == "POST" and parts[4:] == ["cancel"]:
            if inv["state"] in ("succeeded", "canceled"):
                return stripe_error(400, "payment_intent_unexpected_state",
                                    "You cannot cancel this PaymentIntent because it has a status of %s. "
                                    "Only a PaymentIntent with one of the following statuses may be canceled: "
                                    "requires_payment_method, requires_capture, requires_confirmation, "
                                    "requires_action, processing." % inv["state"], payment_intent=intent(i, inv))
            inv["state"], inv["cancellation_reason"] = "canceled", form.get("cancellation_reason")
            r = respond(200, intent(i, inv))
        else:
            return stripe_error(404, None, "Unrecognized request URL")
    elif method == "POST" and path == "/v1/refunds":
        i = form.get("payment_intent")
        inv = invoices.get(i)
        if inv is None or inv["kind"] != "stripe":
            return stripe_error(404, "resource_missing", "No such payment_intent: '%s'" % i, param="payment_intent")
        if inv["state"] != "succeeded":
            return stripe_error(400, "payment_intent_unexpected_state",
                                "This PaymentIntent (%s) does not have a successful charge to refund." % i)
        left = inv["amount_msat"] - sum(x["amount"] for x in refunds.values()
                                        if x["payment_intent"] == i and x["status"] != "failed")
        amount = int(form.get("amount", left))
        if amount > left:
            return stripe_error(400, "amount_too_large",
                                "Refund amount ($%.2f) is greater than unrefunded amount on charge ($%.2f)"
                                % (amount / 100, left / 100), param="amount")
        rid = "re_" + os.urandom(12).hex()
        refunds[rid] = {"id": rid, "object": "refund", "amount": amount, "currency": inv["currency"],
                        "payment_intent": i, "status": "pending" if network["mode"] == "hold" else "succeeded",
                        "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")},
                        "created": int(time.time())}
        r = respond(200, refunds[rid])
    elif method == "GET" and path == "/v1/refunds":
        q = dict(parse_qsl(query))
        found = [x for x in refunds.values() if x["payment_intent"] == q.get("payment_intent")]
        return respond(200, {"object": "list", "data": found[::-1], "has_more": False, "url": "/v1/refunds"})
    else:
        return stripe_error(404, None, "Unrecognized request URL")
    if key:
        idempotency[key] = r
    return r


# -------------------------------------------------------------------------
# Control, routing, HTTP
# -------------------------------------------------------------------------

def control(method, path, body=None):
    global down
    parts = path.split("/")
    action = parts[2] if len(parts) > 2 else ""
    target = parts[3] if len(parts) > 3 else ""
    if action == "stats":
        return respond(200, {"requests": stats["requests"], "invoices": len(invoices)})
    if action == "payments":
        return respond(200, [{k: v for k, v in p.items() if k != "done"} for p in payments.values()])
    if action in ("down", "up"):
        down = action == "down"
        return respond(200, {"down": down})
    if action == "gateway":
        gateway.clear()
        gateway.update(json.loads(body or b"{}"))
        return respond(200, {"gateway": gateway.get("url")})
    if action == "network" and target in ("ok", "fail", "hold", "slow"):
        network["mode"] = target
        return respond(200, network)
    if action == "resolve":
        found = [p for (_, h), p in payments.items() if h == target and p["status"] == "IN_FLIGHT"]
        for p in found:
            finish(p, parts[4] == "ok")
        for r in refunds.values():
            if r["id"] == target and r["status"] == "pending":
                r["status"] = "succeeded" if parts[4] == "ok" else "failed"
                found.append(r)
        return respond(200 if found else 404, {"resolved": len(found)})
    inv = invoices.get(target)
    if inv is None:
        return respond(404, {"error": "no such invoice"})
    paid = {"lnd": "SETTLED", "cln": "paid", "btcpay": "Settled", "stripe": "succeeded"}
    expired = {"lnd": "CANCELED", "cln": "expired", "btcpay": "Expired", "stripe": "canceled"}
    if action == "settle" and inv.get("hold"):
        # the payer's HTLC arrives at a hold invoice: held, not settled (LND's ACCEPTED)
        if inv["state"] != "OPEN":
            return respond(409, {"error": "invoice is " + inv["state"]})
        inv["state"] = "ACCEPTED"
        inv["htlc"] = {"chan_id": "1", "htlc_index": "0", "amt_msat": str(inv["amount_msat"]),
                       "accept_height": HEIGHT, "accept_time": str(int(time.time())), "resolve_time": "0",
                       "expiry_height": HEIGHT + inv["cltv"], "state": "ACCEPTED"}
    elif action in ("settle", "overpay"):
        inv["state"] = paid[inv["kind"]]
        inv["paid_msat"] = inv["amount_msat"] * (2 if action == "overpay" else 1)
        inv["paid_at"] = int(time.time())
    elif action == "expire":
        inv["state"] = expired[inv["kind"]]
    elif action == "paidlate" and inv["kind"] == "btcpay":
        inv["state"], inv["extra"] = "Expired", "PaidLate"
    else:
        return respond(400, {"error": "unknown action"})
    return respond(200, {"state": inv["state"]})


def route(method, path, query, headers, body):
    if path.startswith("/_control/"):
        return control(method, path, body)
    stats["requests"] += 1
    if down:
        return respond(503, {"message": "down for maintenance"})
    if path.startswith(("/.well-known/lnurlp/", "/lnurlp/")):
        return lnurlp(method, path, query)
    if path.startswith(("/v1/invoices", "/v1/invoice/", "/v1/getinfo", "/v2/")):
        return lnd(method, path, query, headers, body)
    if path.startswith("/v1/") and path[4:] in ("invoice", "listinvoices", "delinvoice", "pay", "listpays"):
        return cln(method, path, query, headers, body)
    if path.startswith("/api/v1/stores/"):
        return btcpay(method, path, query, headers, body)
    if path.startswith(("/v1/payment_intents", "/v1/refunds")):
        return stripe(method, path, query, headers, body)
    return respond(404, {"message": "Not Found"})


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        self.busy = False

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        self.buf += data
        if not self.busy:
            self.next_request()

    def next_request(self):
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
        path, _, query = target.partition("?")
        try:
            result = route(method, path, query, headers, body)
        except Exception as e:  # a test server: say what broke
            result = respond(400, {"message": "bad request: %s" % e})
        close = headers.get("connection", "").lower() == "close"
        if isinstance(result, tuple) and len(result) == 3:
            self.write(result, close)
        else:
            self.busy = True
            asyncio.ensure_future(self.finish(result, close))

    def write(self, result, close):
        status, reason, data = result
        if self.transport is None:
            return
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % (status, reason.encode(), len(data)) + data)
        if close:
            self.transport.close()
        elif self.buf:
            self.next_request()

    async def finish(self, result, close):
        """An answer that takes time: a coroutine (one JSON body), or a
        grpc-gateway stream (chunked, one JSON object a line)."""
        if asyncio.iscoroutine(result):
            r = await result
            self.busy = False
            return self.write(r, close)
        how, lines = result
        if how == "slow":
            await asyncio.sleep(30)
        if self.transport is None:
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        async for line in lines:
            if self.transport is None or self.transport.is_closing():
                return
            data = json.dumps(line).encode() + b"\n"
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        if self.transport is not None:
            self.transport.write(b"0\r\n\r\n")
            self.busy = False
            if close:
                self.transport.close()
            elif self.buf:
                self.next_request()


async def main():
    port = int(sys.argv[1])
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
