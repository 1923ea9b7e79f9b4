# The crash test's and the soak's shared start (sourced after common.bash,
# with WORKLOAD_DB set): LNbits on loopback, the database with a provider at
# it (its invoices expire after INVOICE_EXPIRY, watched for late money for
# MONITORING more), the random workload (workload.sql), q() and the payer.
setup_lnbits
LNBITS_PORT=${LNBITS_PORT:-$((TEST_PORT + 1000))}
trap 'touch "$DIR/stop"; stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_lnbits "$DIR" "$LNBITS_PORT"
read -r INKEY PAYKEY _ < <(lnbits_setup "$LNBITS_PORT")
q() { psql_ -d "$WORKLOAD_DB" -Atc "$1"; }

psql_ -d postgres -c "CREATE DATABASE $WORKLOAD_DB"
psql_ -d "$WORKLOAD_DB" >/dev/null <<SQL
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 0, 'millisatoshi');
SELECT payledger.register_payin_type('ITEM', 'an item'), payledger.register_payout_type('FOUNDER', 'the founder');
SELECT payledger.create_merchant_profile('shop', is_default => true);
SELECT payledger.add_provider('shop', 'lnbits', 'lnbits', 'http://127.0.0.1:$LNBITS_PORT',
                              '{"invoice_key": "$INKEY"}', invoice_expiry => '${INVOICE_EXPIRY:-10 minutes}',
                              monitoring => '${MONITORING:-1 hour}');
SQL
psql_ -d "$WORKLOAD_DB" < "$(dirname "${BASH_SOURCE[0]}")/workload.sql" >/dev/null

payer() { # pays two thirds of the invoices at LNbits, as customers would:
  # each invoice is looked at once (paid, or left unpaid for good), so the
  # payer's calls follow the invoices created, not the worker's lag
  local pr
  while [ ! -e "$DIR/stop" ]; do
    for pr in $(q "WITH s AS (INSERT INTO payer_seen SELECT i.payment_request FROM payledger.invoices i
                    WHERE i.status = 'pending' AND NOT EXISTS (SELECT 1 FROM payer_seen s WHERE s.pr = i.payment_request)
                    ORDER BY random() LIMIT 5 RETURNING pr) SELECT pr FROM s" 2>/dev/null); do
      [ $((RANDOM % 3)) = 0 ] || lnbits_pay "$LNBITS_PORT" "$PAYKEY" "$pr" || true
    done
    sleep 0.3
  done
}
