#!/usr/bin/env python3
"""NIP-90 paid jobs end to end over a real Nostr relay (tests/integration/nip90_relay.sh).

Three scripted parties talk only through the relay, as NIP-90 and NIP-57 say:
  - the customer publishes signed job requests (kind 5100), reads the
    provider's feedback and results, and zaps them: a zap request (9734) to
    the provider's LNURL server, which answers a real BOLT11 signed by its
    node, committing to the zap request (description hash);
  - the LNURL server, once the invoice is paid, publishes the zap receipt
    (9735) signed with its own key;
  - the service provider reads requests and receipts from the relay, keeps
    each job's payment state in payledger (through psql), and publishes the
    events payledger templates, signed with its key.
Signatures here are BIP-340 by coincurve, independent of payledger's. The
relay checks them too. Run with LNbits' Python (websockets, coincurve,
bolt11). Environment: RELAY (ws://…), PSQL (the psql command, as JSON).
"""
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time

import bolt11
import websockets
from bolt11 import Bolt11, MilliSatoshi, Tags, TagChar
from coincurve import PrivateKey, PublicKeyXOnly

RELAY = os.environ["RELAY"]
PSQL = json.loads(os.environ["PSQL"])


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def sql(query, **variables):
    """One statement through psql; -v variables are quoted with :'name'."""
    cmd = list(PSQL)
    for k, v in variables.items():
        cmd += ["-v", "%s=%s" % (k, v if isinstance(v, str) else json.dumps(v))]
    r = subprocess.run(cmd, input=query, capture_output=True, text=True)
    if r.returncode != 0:
        fail("psql: %s\n%s" % (query.strip()[:200], r.stderr.strip()))
    return r.stdout.strip()


class Key:
    def __init__(self, name):
        self.sk = PrivateKey(hashlib.sha256(("nip90 e2e " + name).encode()).digest())
        self.pk = PublicKeyXOnly.from_secret(self.sk.secret).format().hex()

    def sign(self, event):
        """NIP-01: the id is sha256 of the serialised event, the sig BIP-340 over it."""
        ev = {"pubkey": self.pk, "created_at": int(time.time()), "kind": event["kind"],
              "tags": event.get("tags", []), "content": event.get("content", "")}
        ser = json.dumps([0, ev["pubkey"], ev["created_at"], ev["kind"], ev["tags"], ev["content"]],
                         separators=(",", ":"), ensure_ascii=False)
        ev["id"] = hashlib.sha256(ser.encode()).hexdigest()
        ev["sig"] = self.sk.sign_schnorr(bytes.fromhex(ev["id"])).hex()
        return ev


CUSTOMER, PROVIDER, LNURL = Key("customer"), Key("provider"), Key("lnurl server")
NODE_SECRET = hashlib.sha256(b"nip90 e2e lnurl node").hexdigest()


class Relay:
    """One websocket to the relay: publish, and read a subscription's events."""

    def __init__(self, ws, name):
        self.ws, self.name, self.queues, self.oks = ws, name, {}, {}

    @classmethod
    async def connect(cls, name):
        r = cls(await websockets.connect(RELAY), name)
        asyncio.ensure_future(r.read())
        return r

    async def read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg[0] == "EVENT":
                self.queues.setdefault(msg[1], asyncio.Queue()).put_nowait(msg[2])
            elif msg[0] == "OK":
                self.oks.setdefault(msg[1], asyncio.Queue()).put_nowait(msg)

    async def publish(self, ev):
        await self.ws.send(json.dumps(["EVENT", ev]))
        ok = await asyncio.wait_for(self.oks.setdefault(ev["id"], asyncio.Queue()).get(), 10)
        if ok[2] is not True:
            fail("%s: the relay refused event %s: %s" % (self.name, ev["id"], ok[3]))

    async def subscribe(self, sub, flt):
        self.queues.setdefault(sub, asyncio.Queue())
        await self.ws.send(json.dumps(["REQ", sub, flt]))

    async def next(self, sub, want=lambda e: True, timeout=10):
        q = self.queues[sub]
        end = time.time() + timeout
        while True:
            ev = await asyncio.wait_for(q.get(), max(end - time.time(), 0.01))
            if want(ev):
                return ev


def tag(ev, name):
    return next((t for t in ev["tags"] if t and t[0] == name), None)


class LnurlServer:
    """The provider's LNURL-pay server with NIP-57 zaps (allowsNostr, its
    nostrPubkey): the callback answers a description-hash BOLT11 for a zap
    request; once paid, it publishes the zap receipt."""

    def __init__(self, relay):
        self.relay, self.invoices = relay, {}

    def callback(self, amount_msat, zap_request_json):
        zr = json.loads(zap_request_json)
        if zr["kind"] != 9734 or tag(zr, "amount")[1] != str(amount_msat) or tag(zr, "p")[1] != PROVIDER.pk:
            return {"status": "ERROR", "reason": "bad zap request"}
        preimage = os.urandom(32)
        h = hashlib.sha256(preimage).hexdigest()
        tags = Tags()
        tags.add(TagChar.description_hash, hashlib.sha256(zap_request_json.encode()).hexdigest())
        tags.add(TagChar.expire_time, 600)
        tags.add(TagChar.payment_secret, os.urandom(32).hex())
        tags.add(TagChar.payment_hash, h)
        pr = bolt11.encode(Bolt11(currency="bc", amount_msat=MilliSatoshi(amount_msat), date=int(time.time()), tags=tags),
                           NODE_SECRET)
        self.invoices[h] = (preimage, zap_request_json, pr)
        return {"pr": pr, "routes": []}

    async def paid(self, pr):
        """The node saw the invoice paid: publish the receipt (9735)."""
        h = bolt11.decode(pr).payment_hash
        preimage, zr_json, pr = self.invoices.pop(h)
        zr = json.loads(zr_json)
        receipt = LNURL.sign({"kind": 9735, "content": "", "tags": [
            ["p", PROVIDER.pk], ["P", zr["pubkey"]], tag(zr, "e"), ["bolt11", pr], ["description", zr_json],
            ["preimage", preimage.hex()]]})
        await self.relay.publish(receipt)
        return receipt


class Customer:
    def __init__(self, relay, lnurl):
        self.relay, self.lnurl = relay, lnurl

    async def request(self, text):
        ev = CUSTOMER.sign({"kind": 5100, "content": "", "tags": [["i", text, "text"], ["p", PROVIDER.pk],
                                                                  ["relays", RELAY]]})
        await self.relay.subscribe("c-" + ev["id"][:8], {"kinds": [7000, 6100], "#e": [ev["id"]]})
        await self.relay.publish(ev)
        return ev

    async def sees(self, req, kind, status=None):
        """The provider's next event about req: a feedback of status, or the result."""
        return await self.relay.next("c-" + req["id"][:8], lambda e: e["kind"] == kind and (
            status is None or tag(e, "status")[1] == status))

    async def zap(self, ev, amount_msat=None):
        """Zap a feedback or result: its amount tag's amount unless given."""
        amount = amount_msat or int(tag(ev, "amount")[1])
        zr = CUSTOMER.sign({"kind": 9734, "content": "", "tags": [
            ["relays", RELAY], ["amount", str(amount)], ["p", PROVIDER.pk], ["e", ev["id"]]]})
        answer = self.lnurl.callback(amount, json.dumps(zr, separators=(",", ":")))
        if "pr" not in answer:
            fail("the LNURL server refused the zap request: %s" % answer)
        inv = bolt11.decode(answer["pr"])
        if int(inv.amount_msat) != amount:
            fail("the LNURL invoice is for %s, not %s" % (inv.amount_msat, amount))
        # the customer's wallet pays it; the LNURL server's node sees it paid
        return await self.lnurl.paid(answer["pr"])


class Provider:
    """A service provider: its jobs live in payledger, its events on the relay."""

    def __init__(self, relay):
        self.relay, self.last_event = relay, int(sql("SELECT coalesce(max(id), 0) FROM payledger.events") or 0)

    async def start(self):
        await self.relay.subscribe("requests", {"kinds": [5100], "#p": [PROVIDER.pk]})
        await self.relay.subscribe("receipts", {"kinds": [9735], "#p": [PROVIDER.pk]})

    async def take(self, req, **settings):
        got = await self.relay.next("requests", lambda e: e["id"] == req["id"])
        args = "".join(", %s => :'%s'" % (k, k) for k in settings)
        return sql("SELECT payledger.nostr_job_open(:'req', :'pk'%s)" % args, req=json.dumps(got), pk=PROVIDER.pk,
                   **{k: str(v) for k, v in settings.items()})

    async def publish(self, job, template_sql, **variables):
        template = json.loads(sql(template_sql, job=job, **variables))
        ev = PROVIDER.sign(template)
        await self.relay.publish(ev)
        state = sql("SELECT payledger.nostr_job_published(:'job', :'ev')", job=job, ev=json.dumps(ev))
        return ev, state

    async def receipt(self, zapped):
        """The next zap receipt on the relay for an event it published, paid in."""
        ev = await self.relay.next("receipts", lambda e: tag(e, "e") and tag(e, "e")[1] == zapped["id"])
        return sql("SELECT outcome || ' ' || paid_msat || ' ' || state FROM payledger.nostr_job_pay_zap(:'r')",
                   r=json.dumps(ev))

    def events(self, job):
        """payledger's events about a job since the last look (as LISTEN
        payledger_events would announce them)."""
        rows = sql("SELECT id || ' ' || topic FROM payledger.events_since(:'after', 1000) WHERE subject_id = :'job'",
                   after=str(self.last_event), job=job)
        topics = []
        for line in rows.splitlines():
            i, topic = line.split(" ", 1)
            self.last_event = max(self.last_event, int(i))
            topics.append(topic)
        return topics

    def state(self, job):
        return sql("SELECT state || ' ' || paid_msat || '/' || requested_msat FROM payledger.nostr_jobs WHERE id = :'job'",
                   job=job)


def expect(what, got, want):
    if got != want:
        fail("%s: expected %r, got %r" % (what, want, got))
    print("  %s: %s" % (what, got))


async def main():
    relays = [await Relay.connect(n) for n in ("customer", "provider", "lnurl")]
    lnurl = LnurlServer(relays[2])
    customer, provider = Customer(relays[0], lnurl), Provider(relays[1])
    await provider.start()
    # the provider's settings: upfront, 21 sat, paid by zap, a part of 5 sat
    sql("SELECT payledger.nostr_provider_configure(:'pk', :'lnurl', payledger.account_id('dvm', 'msat', 'revenue'), "
        "'upfront', 21000, payment_timeout => '1 hour', methods => ARRAY['zap'], chunk_msat => 5000)",
        pk=PROVIDER.pk, lnurl=LNURL.pk)

    print("upfront: payment-required, a zap, the result")
    req = await customer.request("translate: hello")
    job = await provider.take(req)
    ev, st = await provider.publish(job, "SELECT payledger.nostr_job_feedback(:'job', 'payment-required')")
    expect("published payment-required", st, "payment_required")
    fb = await customer.sees(req, 7000, "payment-required")
    expect("asks", tag(fb, "amount")[1], "21000")
    await customer.zap(fb)
    expect("receipt", await provider.receipt(fb), "credited 21000 processing")
    expect("events", provider.events(job), ["nostr_job.paid"])
    _, st = await provider.publish(job, "SELECT payledger.nostr_job_result(:'job', 'hola')")
    res = await customer.sees(req, 6100)
    expect("result", (res["content"], st), ("hola", "success"))

    print("after completion: the result asks, a reminder asks the same, one zap pays")
    req = await customer.request("summarise: a long text")
    job = await provider.take(req, policy="after_completion", price_msat=30000)
    _, st = await provider.publish(job, "SELECT payledger.nostr_job_result(:'job', 'short')")
    expect("delivered", st, "delivered")
    res = await customer.sees(req, 6100)
    _, st = await provider.publish(job, "SELECT payledger.nostr_job_feedback(:'job', 'payment-required')")
    reminder = await customer.sees(req, 7000, "payment-required")
    expect("the reminder asks what is owed", tag(reminder, "amount")[1], tag(res, "amount")[1])
    await customer.zap(res)
    expect("receipt", await provider.receipt(res), "credited 30000 success")

    print("flexible: held by payment-required until paid")
    req = await customer.request("flexible: draw")
    job = await provider.take(req, policy="flexible", price_msat=12000)
    expect("starts", provider.state(job), "processing 0/12000")
    _, st = await provider.publish(job, "SELECT payledger.nostr_job_feedback(:'job', 'payment-required')")
    expect("held", st, "payment_required")
    fb = await customer.sees(req, 7000, "payment-required")
    await customer.zap(fb)
    expect("receipt", await provider.receipt(fb), "credited 12000 processing")
    _, st = await provider.publish(job, "SELECT payledger.nostr_job_result(:'job', 'a drawing')")
    expect("result", st, "success")

    print("progressive: two parts of the provider's size, each zapped, then the result")
    req = await customer.request("progressive: count to ten")
    job = await provider.take(req, policy="flexible", price_msat=0)
    for n in (1, 2):
        _, st = await provider.publish(job, "SELECT payledger.nostr_job_feedback(:'job', 'partial', message => :'m')",
                                       m="part %d" % n)
        part = await customer.sees(req, 7000, "partial")
        expect("part %d asks" % n, tag(part, "amount")[1], "5000")
        await customer.zap(part)
        expect("part %d paid" % n, (await provider.receipt(part)).split(" ")[:2], ["credited", str(5000 * n)])
    _, st = await provider.publish(job, "SELECT payledger.nostr_job_result(:'job', 'ten')")
    expect("result", (st, provider.state(job)), ("success", "success 10000/10000"))

    print("timeout: never paid; payledger's event tells the provider, which publishes the error; a late zap")
    req = await customer.request("never paid")
    job = await provider.take(req, payment_timeout="1 second")
    ev, _ = await provider.publish(job, "SELECT payledger.nostr_job_feedback(:'job', 'payment-required')")
    fb = await customer.sees(req, 7000, "payment-required")
    provider.events(job)
    await asyncio.sleep(1.2)
    sql("SELECT payledger.nostr_expire_jobs()")   # (the worker's housekeeping step jobs_expired)
    expect("events", provider.events(job), ["nostr_job.timed_out"])
    _, st = await provider.publish(job, "SELECT payledger.nostr_job_feedback(:'job', 'error', message => 'payment timeout')")
    err = await customer.sees(req, 7000, "error")
    expect("error feedback", (tag(err, "status")[2], st), ("payment timeout", "error"))
    await customer.zap(fb)
    expect("late receipt", await provider.receipt(fb), "suspense 0 error")
    expect("events", provider.events(job), ["nostr_job.paid_after_failure"])

    print("invariants:", sql("SELECT count(*) FROM payledger.check_invariants()"), "violations")
    if sql("SELECT count(*) FROM payledger.check_invariants()") != "0":
        fail(sql("SELECT * FROM payledger.check_invariants()"))
    for r in relays:
        await r.ws.close()


asyncio.run(main())
