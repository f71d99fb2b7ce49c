"""``listgate db copy --from SOURCE``: move a store between SQLite and PostgreSQL.

The configured store (the target: ``[postgresql]`` with ``[lists] backend =
postgresql``, else ``[sqlite] path``) is made exactly the source -- the export
document imported with ``--prune`` and its bans, in one validated transaction -- and
then checked: every list is asked, through each side's own daemon backend, about
every address the source knows of it (members, nonmembers, exact bans, members of
the lists its accept entries name) and one stranger, and the facts and Mailman's
verdict must be the same on both sides.  A difference is reported and exits 1, so a
migration is proven before the daemons are pointed at the new store.

SOURCE is ``sqlite:PATH`` or ``postgresql:CONNINFO`` (a libpq connection string or
``service=NAME``; passwords from libpq's password file or ``PGPASSFILE``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from listgate import chain, model
from listgate.backends.sqlite import SqliteBackend, SqliteStore, StoreError
from listgate.config import Config

#: senders asked about at once (the facts of each are compared one by one)
BATCH = 500
#: an address no store knows: the verdict for a stranger is compared too
STRANGER = "stranger@listgate.invalid"


def _source(spec: str) -> tuple[SqliteStore, SqliteBackend]:
    """The store and daemon backend named by ``sqlite:PATH`` / ``postgresql:CONNINFO``."""
    engine, sep, where = spec.partition(":")
    if not sep or engine not in ("sqlite", "postgresql"):
        raise ValueError(f"invalid --from {spec!r}: expected sqlite:PATH or "
                         "postgresql:CONNINFO")
    if engine == "sqlite":
        return SqliteStore(where), SqliteBackend(where)
    from listgate.backends import postgresql

    postgresql._import()
    import psycopg

    try:
        desc = " ".join(f"{k}={v}" for k, v in psycopg.conninfo.conninfo_to_dict(where).items()
                        if k in ("service", "host", "port", "dbname")) or "(libpq defaults)"
    except psycopg.Error as e:
        raise ValueError(f"invalid --from {spec!r}: {postgresql._cause(e)}") from None
    return postgresql.PostgresStore(where, desc), postgresql.PostgresBackend(where, desc)


def _target_backend(cfg: Config) -> SqliteBackend:
    if cfg.lists.backend == "postgresql":
        from listgate.backends import postgresql

        return postgresql.create(cfg)
    return SqliteBackend(cfg.sqlite.path, cfg.sqlite.busy_timeout)


def probes(doc: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """(list, senders) to compare: every address the export knows of the list."""
    by_list = {d["address"]: d for d in doc["lists"]}
    global_bans = [b["entry"] for b in doc.get("bans", []) if b["list"] is None]
    for address, d in by_list.items():
        senders = [m["address"] for role in ("members", "nonmembers") for m in d[role]]
        senders += [b["entry"].lower() for b in doc.get("bans", [])
                    if b["list"] == address and not b["entry"].startswith("^")]
        senders += [e.lower() for e in global_bans if not e.startswith("^")]
        for entry in d.get("accept_these_nonmembers", []):
            ref = by_list.get(entry[1:].lower()) if entry.startswith("@") else None
            if ref is not None:
                senders += [m["address"] for m in ref["members"]]
        yield address, [*dict.fromkeys(senders), STRANGER]


def compare(doc: dict[str, Any], a: model.Backend, b: model.Backend,
            limit: int = 10) -> tuple[int, list[str]]:
    """Ask both backends about every probe; (senders compared, differences)."""
    compared, diffs = 0, []
    for address, senders in probes(doc):
        for i in range(0, len(senders), BATCH):
            batch = senders[i:i + BATCH]
            fa, fb = a.list_facts(address, batch), b.list_facts(address, batch)
            if fa.policy != fb.policy or fa.site != fb.site:
                diffs.append(f"{address}: the list's settings differ")
            for sa, sb in zip(fa.senders, fb.senders, strict=True):
                compared += 1
                va = chain.list_verdict(model.ListFacts(fa.policy, (sa,), fa.site))
                vb = chain.list_verdict(model.ListFacts(fb.policy, (sb,), fb.site))
                if sa != sb or va != vb:
                    diffs.append(f"{address} {sa.address}: {va.action} ({va.rule}) before, "
                                 f"{vb.action} ({vb.rule}) after")
            if len(diffs) >= limit:
                return compared, diffs[:limit]
    return compared, diffs


def cmd_db_copy(args: argparse.Namespace, store: SqliteStore) -> int:
    """Make the configured store an exact copy of another (SQLite <-> PostgreSQL) and
    prove it: every list's verdicts compared on both sides."""
    src_store, src_backend = _source(args.source)
    dst_backend = _target_backend(args.cfg)
    try:
        with src_store:
            doc = src_store.export_json()
        if doc["lists"] == [] and not args.allow_empty:
            raise StoreError(f"{src_store.path} holds no lists: nothing to copy (is it the "
                             "right store? --allow-empty copies it anyway)")
        summary = store.import_json(doc, prune=True)
        print(f"copied {summary['lists']} lists ({summary['members']} members, "
              f"{summary['nonmembers']} nonmembers), {summary['bans']} bans from "
              f"{src_store.path} to {store.path}; pruned {summary['pruned']} lists")
        compared, diffs = compare(doc, src_backend, dst_backend)
    finally:
        src_backend.close()
        dst_backend.close()
    if diffs:
        for d in diffs:
            print(f"listgate: verdict differs: {d}")
        raise StoreError("the copy does not give the source's verdicts (see above); do not "
                         "point the daemons at it")
    print(f"verdicts compared: {compared} senders on {len(doc['lists'])} lists, all identical")
    return 0


def register(db: Any, leaf: Any) -> None:
    """Add ``db copy`` to the ``db`` group (``leaf`` is :func:`listgate.admin.register`'s)."""
    p = leaf(db, "copy", cmd_db_copy, write=True)
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                   help="sqlite:PATH or postgresql:CONNINFO (e.g. postgresql:'host=db1 "
                        "dbname=listgate')")
    p.add_argument("--allow-empty", action="store_true",
                   help="copy a source without lists (empties the target)")

