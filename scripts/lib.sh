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

PG_VERSION=$(toml postgres version)
PG_CONFIG=$(toml postgres pg_config)
PG_BIN=$(toml postgres bindir)
PGRX_VERSION=$(toml pgrx version)
TEST_PORT=$(toml postgres test_port)
DEMO_PORT=$(toml postgres demo_port)
PGXS_TEST=$(dirname "$("$PG_CONFIG" --pgxs 2>/dev/null || echo /usr/lib/postgresql/$PG_VERSION/lib/pgxs/src/makefiles/x)")/../test
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\n== %s\n' "$*" >&2; }

# Install what is missing: Debian packages, cargo-pgrx, the pgrx config. Idempotent.
setup_machine() {
  local pkgs=(postgresql-$PG_VERSION postgresql-server-dev-$PG_VERSION libclang-dev clang pkg-config sudo
              python3 python3-venv curl ca-certificates)
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
  if ! grep -qs "pg$PG_VERSION" "$HOME/.pgrx/config.toml"; then
    log "cargo pgrx init --pg$PG_VERSION"
    cargo pgrx init --pg$PG_VERSION "$PG_CONFIG" >/dev/null
  fi
}

# Build the extension in release mode and install it into the Debian PostgreSQL.
install_extension() {
  log "building and installing payledger"
  (cd "$REPO" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
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
