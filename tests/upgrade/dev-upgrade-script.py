#!/usr/bin/env python3
"""Regenerate the upgrade script of the version in development.

The version in development is Cargo.toml's; the release it upgrades from is
the newest install script frozen in tests/upgrade (payledger--<old>.sql). The
upgrade script sql/payledger--<old>--<new>.sql is derived, object by object,
from two install scripts: the frozen one and the one cargo pgrx generates from
the sources, in their install order (the `requires` graph: ledger, payin,
events, provider, worker, credits, nostr, then the invariants and the grants).
Install the current build first:

    cargo pgrx install --release && python3 tests/upgrade/dev-upgrade-script.py \\
        && cargo pgrx install --release

For each statement of the new script, in order:
  * one that the old has word for word is skipped (it is installed already),
    but GRANT, REVOKE and DO blocks (the roles and src/security.sql's grants,
    both idempotent), which are run again: new objects need them;
  * a function or procedure is written as CREATE OR REPLACE (new ones, and
    the old's whose text changed);
  * a table, trigger, type, view, index or policy that the old has with other
    text cannot be replaced: tests/upgrade/<old>--<new>.pre.sql must change it
    by hand (the generator refuses to write a script that does not mention
    it), or drop it, and it is then created here;
  * rows seeded into a table of the old release, whose INSERT changed, are
    inserted by hand in the .pre.sql (the generator refuses to write a script
    that does not insert into that table there): only the new rows;
  * anything else (the new modules' tables, seeds, config dumps) is written
    as it is.

tests/integration/upgrade.sh then proves that each frozen release followed by
the upgrade scripts equals a fresh install. Once a version is released (its
install script frozen in tests/upgrade), its upgrade script is never
regenerated: the generator refuses to.
"""
import re
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def version_key(v: str):
    return tuple(int(x) for x in v.split("."))


NEW = re.search(r'(?m)^version\s*=\s*"([^"]+)"', (REPO / "Cargo.toml").read_text()).group(1)
FROZEN = sorted((p.name[len("payledger--"):-len(".sql")] for p in (REPO / "tests/upgrade").glob("payledger--*.sql")),
                key=version_key)
if NEW in FROZEN:
    sys.exit(f"{NEW} is released (tests/upgrade/payledger--{NEW}.sql): bump Cargo.toml's version first")
OLD_VERSION = FROZEN[-1]
OLD = REPO / f"tests/upgrade/payledger--{OLD_VERSION}.sql"
PRE = REPO / f"tests/upgrade/{OLD_VERSION}--{NEW}.pre.sql"
OUT = REPO / f"sql/payledger--{OLD_VERSION}--{NEW}.sql"


def generated_script() -> Path:
    """The install script pgrx generated for the default major (pgrx.toml's
    [postgres] version, or PG_MAJOR), where it installed it."""
    text = (REPO / "pgrx.toml").read_text()
    major = os.environ.get("PG_MAJOR") or re.search(r"(?m)^version\s*=\s*(\d+)", text).group(1)
    section = text.split(f"[pg{major}]", 1)[1]
    pg_config = re.search(r'(?m)^pg_config\s*=\s*"([^"]+)"', section).group(1)
    share = subprocess.check_output([pg_config, "--sharedir"], text=True).strip()
    return Path(share) / f"extension/payledger--{NEW}.sql"


def statements(text: str):
    """(source, statement) pairs: the text split at top-level semicolons,
    each with the source file pgrx named for it."""
    out, buf, i, n, source = [], [], 0, len(text), "?"
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j + 1
            line = text[i:j]
            m = re.match(r"-- (src/\S+?)(:\d+)?\s*$", line)
            if m:
                source = m.group(1)
            buf.append(line)
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i) + 2
            buf.append(text[i:j])
            i = j
        elif c == "$":
            m = re.match(r"\$[A-Za-z_]*\$", text[i:])
            if m:
                tag = m.group(0)
                j = text.find(tag, i + len(tag)) + len(tag)
                buf.append(text[i:j])
                i = j
            else:
                buf.append(c)
                i += 1
        elif c in "'\"":
            j = i + 1
            while True:
                j = text.find(c, j) + 1
                if not text.startswith(c, j):
                    break
                j += 1
            buf.append(text[i:j])
            i = j
        elif c == ";":
            buf.append(c)
            out.append((source, "".join(buf)))
            buf = []
            i += 1
        else:
            buf.append(c)
            i += 1
    return out


def code(stmt: str) -> str:
    """The statement without comments, whitespace normalised."""
    lines = []
    in_body = False
    for line in stmt.splitlines():
        if not in_body and line.lstrip().startswith("--"):
            continue
        lines.append(line)
        if line.count("$$") % 2 == 1:
            in_body = not in_body
    text = re.sub(r"/\*.*?\*/", " ", "\n".join(lines), flags=re.S)
    return " ".join(text.split())


ROUTINE = re.compile(r'^CREATE\s+(?:OR REPLACE\s+)?(FUNCTION|PROCEDURE)\s+("?[\w.]+"?)\s*\(', re.I)
SEED = re.compile(r"^INSERT\s+INTO\s+(\S+)", re.I)
OBJECT = re.compile(
    r"^CREATE\s+(?:UNIQUE\s+)?(TABLE|TRIGGER|TYPE|VIEW|INDEX|POLICY)\s+(\S+)(?:\s+ON\s+(\S+))?", re.I)


def name_of(kind: str, name: str, on: str = None) -> str:
    name = name.strip('"')
    if kind.upper() == "POLICY":
        return f"{name} ON {on}"
    return name if "." in name or kind.upper() in ("INDEX", "TRIGGER") else "payledger." + name


def main():
    old = statements(OLD.read_text())
    old_code = {code(s) for _, s in old}
    old_routines = {}
    old_objects = set()
    for _, s in old:
        c = code(s)
        m = ROUTINE.match(c)
        if m:
            old_routines[name_of("function", m.group(2))] = c
        m = OBJECT.match(c)
        if m:
            old_objects.add((m.group(1).upper(), name_of(m.group(1), m.group(2), m.group(3))))

    pre = PRE.read_text()
    body, missing, last_source = [], [], None
    for source, s in statements(generated_script().read_text()):
        c = code(s)
        if not c:
            continue
        if c in old_code and not re.match(r"^(GRANT|REVOKE|DO)\b", c):
            continue
        text = "\n".join(l for l in s.strip().splitlines() if not re.match(r"-- (src/|payledger::|bootstrap|finalize)", l))
        m = ROUTINE.match(c)
        if m:
            text = re.sub(r"^((?:\s*--[^\n]*\n|\s*/\*.*?\*/)*\s*)CREATE\s+(?:OR REPLACE\s+)?",
                          r"\1CREATE OR REPLACE ", text, count=1, flags=re.S)
        elif SEED.match(c) and ("TABLE", name_of("table", SEED.match(c).group(1))) in old_objects:
            # rows of a table the old release seeded, changed: the new rows
            # are inserted by hand (the old ones are there already)
            table = name_of("table", SEED.match(c).group(1))
            if not re.search(r"INSERT\s+INTO\s+" + re.escape(table) + r"\b", pre, re.I):
                missing.append(f"rows of {table} ({source})")
            continue
        else:
            m = OBJECT.match(c)
            if m and (m.group(1).upper(), name_of(m.group(1), m.group(2), m.group(3))) in old_objects:
                obj = name_of(m.group(1), m.group(2), m.group(3)).split(".")[-1]
                if not re.search(r"\b" + re.escape(obj) + r"\b", pre):
                    missing.append(f"{m.group(1)} {obj} ({source})")
                # dropped by hand: created anew here; else altered by hand
                if not re.search(rf"DROP\s+{m.group(1)}\s+(IF EXISTS\s+)?(payledger\.)?{re.escape(obj)}\b", pre, re.I):
                    continue
        if source != last_source:
            body.append(f"\n-- {source}")
            last_source = source
        body.append(text)
    if missing:
        sys.exit(f"changed since {OLD_VERSION}, to be altered by hand in " + str(PRE.relative_to(REPO)) + ":\n  "
                 + "\n  ".join(missing))
    OUT.write_text(pre.rstrip() + "\n" + "\n".join(body) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
