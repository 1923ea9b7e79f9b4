#!/usr/bin/env bash
# NIP-90 paid jobs end to end over a real Nostr relay (PyPI nostr-relay on
# loopback, which checks every signature): a scripted customer, service
# provider and LNURL server (tests/integration/nip90_relay.py) talk only
# through the relay, and the provider keeps its jobs in payledger. Upfront,
# after completion (with a reminder), flexible, progressive, and a timeout
# the provider learns of from payledger's events, then a late zap.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
setup_lnbits        # (its Python has websockets, coincurve and bolt11)
setup_nostr_relay
RELAY_PORT=$((TEST_PORT + 1002))
trap 'stop_nostr_relay "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_nostr_relay "$DIR" "$RELAY_PORT"

psql_ -d postgres -c "CREATE DATABASE payledger_it"
psql_ -d payledger_it >/dev/null <<SQL
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 3, 'millisatoshi');
SELECT payledger.open_account('dvm', 'msat', 'revenue');
SQL
PSQL=$(jq -cn --args '$ARGS.positional' -- runuser -u postgres -- "$PG_BIN/psql" -X -q -At -h "$DIR" -p "$TEST_PORT" \
        -U postgres -d payledger_it -v ON_ERROR_STOP=1)
RELAY="ws://127.0.0.1:$RELAY_PORT" PSQL="$PSQL" "$LNBITS_VENV/bin/python" "$REPO/tests/integration/nip90_relay.py"
echo "ok: nip90_relay"
