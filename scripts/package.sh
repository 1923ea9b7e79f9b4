#!/usr/bin/env bash
# Build the Debian package postgresql-<N>-payledger for one PostgreSQL major:
#   bash scripts/package.sh [N ...]     (default: every major in pgrx.toml)
# Writes target/packages/postgresql-<N>-payledger_<version>_<arch>.deb.
# The files come from `cargo pgrx package`; they are laid out where Debian's
# and apt.postgresql.org's postgresql-<N> look for extensions
# (/usr/lib/postgresql/<N>/lib, /usr/share/postgresql/<N>/extension), whatever
# prefix the pg_config it was built with has.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKG_DIR="$REPO/target/packages"

# build_deb <major>: prints the path of the .deb it wrote.
build_deb() {
  use_major "$1"
  local version arch stage root libdir sharedir deb depends
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)
  arch=$(dpkg --print-architecture)
  stage=$(mktemp -d)
  log "cargo pgrx package for PostgreSQL $PG_VERSION"
  (cd "$REPO" && PGRX_PG_CONFIG_PATH="$PG_CONFIG" cargo pgrx package --pg-config "$PG_CONFIG" \
     --no-default-features --features "pg$PG_VERSION" --out-dir "$stage/pgrx" >/dev/null)
  libdir=$stage/pgrx$("$PG_CONFIG" --pkglibdir)
  sharedir=$stage/pgrx$("$PG_CONFIG" --sharedir)/extension
  [ -f "$libdir/payledger.so" ] && [ -f "$sharedir/payledger.control" ] ||
    { echo "cargo pgrx package wrote no payledger.so or payledger.control" >&2; return 1; }

  root=$stage/root
  mkdir -p "$root/usr/lib/postgresql/$PG_VERSION/lib" "$root/usr/share/postgresql/$PG_VERSION/extension" \
           "$root/usr/share/doc/postgresql-$PG_VERSION-payledger" "$root/DEBIAN"
  install -m 0644 "$libdir/payledger.so" "$root/usr/lib/postgresql/$PG_VERSION/lib/"
  install -m 0644 "$sharedir"/payledger* "$root/usr/share/postgresql/$PG_VERSION/extension/"
  install -m 0644 "$REPO/README.md" "$REPO/CHANGELOG.md" "$root/usr/share/doc/postgresql-$PG_VERSION-payledger/"
  # the shared libraries payledger.so links, as Debian names their packages
  depends=$(mkdir -p "$stage/debian" && echo "Source: payledger" > "$stage/debian/control" &&
            cd "$stage" && dpkg-shlibdeps -O "root/usr/lib/postgresql/$PG_VERSION/lib/payledger.so" 2>/dev/null |
            sed -n 's/^shlibs:Depends=//p')
  cat > "$root/DEBIAN/control" <<EOF
Package: postgresql-$PG_VERSION-payledger
Version: $version
Architecture: $arch
Maintainer: payledger developers <payledger@localhost>
Section: database
Priority: optional
Depends: postgresql-$PG_VERSION${depends:+, $depends}
Installed-Size: $(du -sk "$root" | cut -f1)
Description: double-entry payments ledger inside PostgreSQL $PG_VERSION
 payledger keeps a payments ledger inside the database: pay-ins and pay-outs,
 invoices at payment providers reconciled by a background worker, prepaid
 credits, NIP-57 zaps and NIP-90 jobs, with plain SQL calls that are atomic
 and audited. After installing: shared_preload_libraries = 'payledger' (for
 the worker), then CREATE EXTENSION payledger.
EOF
  mkdir -p "$PKG_DIR"
  deb=$PKG_DIR/postgresql-$PG_VERSION-payledger_${version}_$arch.deb
  dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
  rm -rf "$stage"
  echo "$deb"
}

# (sourced by the package test for build_deb; run, it builds)
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  setup_machine
  for m in ${*:-$PG_MAJORS}; do build_deb "$m"; done
fi
