// A real NIP-47 wallet service for payledger's tests: @getalby/sdk's
// NWCWalletService on a Nostr relay, its make_invoice and lookup_invoice
// answered by an LNbits wallet (its invoice key). It writes the connection
// URI a user would paste (nostr+walletconnect://…) to the file named by
// NWC_URI_FILE, then serves until killed.
//   RELAY_URL=ws://127.0.0.1:7447 LNBITS_URL=http://127.0.0.1:5000 LNBITS_INKEY=… \
//   NWC_URI_FILE=/tmp/nwc.uri [NWC_INFO=none] node wallet_service.mjs
import { WebSocket } from "ws";
import { writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";

globalThis.WebSocket = WebSocket; // (Node 20 has no WebSocket global)
const nwc = await import("@getalby/sdk/nwc");
const { getPublicKey } = await import("nostr-tools");

const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};
const relayUrl = env("RELAY_URL");
const lnbits = env("LNBITS_URL");
const inkey = env("LNBITS_INKEY");

const hex = (b) => Buffer.from(b).toString("hex");
const walletSecret = hex(randomBytes(32));
const clientSecret = hex(randomBytes(32));
const clientPubkey = getPublicKey(Buffer.from(clientSecret, "hex"));

async function lnbitsCall(method, path, body) {
  const res = await fetch(lnbits + path, {
    method,
    headers: { "X-Api-Key": inkey, "Content-Type": "application/json" },
    body: body && JSON.stringify(body),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(json.detail || `LNbits answered ${res.status}`);
  return json;
}

const transaction = (p, bolt11) => ({
  type: "incoming",
  state: p.paid || p.status === "success" ? "settled" : "pending",
  invoice: bolt11,
  description: p.memo || "",
  description_hash: "",
  preimage: p.preimage || "",
  payment_hash: p.payment_hash,
  amount: Math.abs(Number(p.amount ?? 0)),
  fees_paid: 0,
  created_at: Math.floor(Date.now() / 1000),
  expires_at: undefined,
  settled_at: undefined,
  metadata: {},
});

const handler = {
  async makeInvoice(req) {
    try {
      if (!req.amount || req.amount % 1000 !== 0) {
        return { result: undefined, error: { code: "OTHER", message: "LNbits invoices are in whole sats" } };
      }
      const p = await lnbitsCall("POST", "/api/v1/payments", {
        out: false, amount: req.amount / 1000, unit: "sat", memo: req.description || "", expiry: req.expiry || 3600,
      });
      const bolt11 = p.bolt11 || p.payment_request;
      return { result: { ...transaction({ ...p, amount: req.amount }, bolt11), description: req.description || "" }, error: undefined };
    } catch (e) {
      return { result: undefined, error: { code: "INTERNAL", message: String(e.message || e) } };
    }
  },
  async lookupInvoice(req) {
    try {
      const p = await lnbitsCall("GET", `/api/v1/payments/${req.payment_hash}`);
      const d = p.details || {};
      return { result: transaction({ ...d, paid: p.paid, preimage: p.preimage || d.preimage, payment_hash: req.payment_hash },
                                   d.bolt11 || ""), error: undefined };
    } catch (e) {
      return { result: undefined, error: { code: "NOT_FOUND", message: String(e.message || e) } };
    }
  },
};

const service = new nwc.NWCWalletService({ relayUrl });
// (logged, so that the test can tell which encryption the client chose)
const decrypt = service.decrypt.bind(service);
service.decrypt = (keypair, content, encryptionType) => {
  console.log("request encrypted with", encryptionType);
  return decrypt(keypair, content, encryptionType);
};
const walletPubkey = getPublicKey(Buffer.from(walletSecret, "hex"));
// NWC_INFO=none: no info event, as older wallet services (NIP-04 only)
if (process.env.NWC_INFO !== "none") {
  await service.publishWalletServiceInfoEvent(walletSecret, ["make_invoice", "lookup_invoice"], []);
}
await service.subscribe(new nwc.NWCWalletServiceKeyPair(walletSecret, clientPubkey), handler);
const uri = `nostr+walletconnect://${walletPubkey}?relay=${encodeURIComponent(relayUrl)}&secret=${clientSecret}`;
writeFileSync(env("NWC_URI_FILE"), uri + "\n");
console.log("NWC wallet service ready for client", clientPubkey);
