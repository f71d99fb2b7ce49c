"""``listgate db|lists|members|bans``: the admin commands for listgate's own store.

These edit the store the daemon reads: the SQLite file (``[sqlite] path``) or, with
``[lists] backend = postgresql``, the PostgreSQL database of ``[postgresql]``, which
every MX host's daemon and CLI share (same commands, same output).  The daemon opens the
file read-only and notices every committed change on its next query (after the
engine's cache TTL), so there is nothing to reload.  Writing commands create the
database on first use; reading commands on a missing database fail, naming the
path, rather than showing an empty store that is not the one the daemon reads.

Exit status: 0 success, 1 operational error (no such list, no database, I/O),
2 usage or validation error (a bad address, action or option).  Errors go to
stderr as ``listgate: <message>``.

Commands::

    listgate db init                     # create the store (or upgrade an older schema)
    listgate db upgrade                  # upgrade an older schema in place
    listgate db copy --from sqlite:PATH|postgresql:CONNINFO   # move a store, proven
    listgate lists create LIST [--default-member-action A]
                               [--default-nonmember-action A] [--emergency yes|no]
    listgate lists delete LIST
    listgate lists show LIST             # JSON: the policy plus member/nonmember/ban counts
    listgate lists ls [--json]           # one posting address per line (alias: list)
    listgate lists set LIST KEY VALUE
    listgate lists password LIST [--stdin | --clear]   # the moderator password (a hash)
    listgate site show | site set KEY VALUE            # header_checks, jump_chain...
    listgate lists export FILE.json      # '-' = stdout
    listgate lists import FILE.json [--prune]   # '-' = stdin
    listgate members add LIST [ADDR ...] [--file F] [--nonmember] [--moderation-action A]
    listgate members remove LIST [ADDR ...] [--file F] [--nonmember]
    listgate members ls LIST [--nonmember] [--json]  # "address<TAB>action" per line
    listgate bans add ENTRY ... [--list LIST]
    listgate bans remove ENTRY ... [--list LIST]
    listgate bans ls [--list LIST] [--json]

Every ``ls`` is also ``list``; ``members remove``, ``bans remove`` and ``lists
delete`` are also ``rm``.

Actions are Mailman 3's: hold, reject, discard, accept, defer.  ``lists set`` keys
are the settings of :data:`listgate.listsettings.LIST_FIELDS`: default_member_action,
default_nonmember_action, emergency (yes/no), the four lists
accept_these_nonmembers, hold_these_nonmembers, reject_these_nonmembers,
discard_these_nonmembers, and the rest of the posting chain's (header_matches,
max_message_size, max_num_recipients, require_explicit_destination,
acceptable_aliases, administrivia, ...).  A list VALUE is comma-separated (an empty
string clears the list) or, for regexps that contain commas, a JSON array such as
``'["^a{1,3}@example\\\\.com", "bob@example.org"]'``.  Entries are an exact address,
a ``^regexp`` or (accept list only) ``@list@domain``; like Mailman, exact entries
are compared case-sensitively to the lowercased sender, so keep them lowercase.
Ban entries are an exact address or a ``^regexp`` (matched case-insensitively).

``members add`` is an upsert: an existing member gets the ``--moderation-action``
given, or none (= the list's default) when the option is left out.

Export format (``lists export``; ``lists import`` reads the same)::

    {
      "version": 1,
      "lists": [
        {
          "address": "dev@example.org",
          "default_member_action": "defer",
          "default_nonmember_action": "hold",
          "emergency": false,
          "accept_these_nonmembers": ["^.*@example\\\\.org$", "@announce@example.org"],
          "hold_these_nonmembers": [],
          "reject_these_nonmembers": [],
          "discard_these_nonmembers": [],
          "members": [{"address": "alice@example.org", "moderation_action": null}],
          "nonmembers": [{"address": "bot@example.net", "moderation_action": "accept"}]
        }
      ],
      "bans": [{"list": null, "entry": "^.*@spam\\\\.example$"},
               {"list": "dev@example.org", "entry": "troll@example.com"}]
    }

``list`` null in a ban means a global ban.  On import, every key of a list but
``address`` is optional (missing = Mailman's default or empty); unknown keys are
errors.  Each list in the file replaces that list entirely (settings, members,
nonmembers), so importing the same file twice leaves the same state; lists not in
the file are kept unless ``--prune`` is given.  If the file has a ``bans`` key, its
bans replace the global bans and those of the lists in the file (a ban may only
name a list that is in the file); without the key, bans are left alone.  The
whole import is validated first and applied in one transaction.  Exports are
sorted, so two exports of the same state are byte-identical and diff cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from listgate import listsettings, model
from listgate.backends import open_store
from listgate.backends.sqlite import (
    LIST_OPTIONS,
    SqliteStore,
    StoreError,
    validate_address,
    validate_ban_entry,
)
from listgate.config import Config, parse_bool

Handler = Callable[[argparse.Namespace, Config], int]
_Command = Callable[[argparse.Namespace, SqliteStore], int]

_ACTION_METAVAR = "{" + ",".join(model.ACTIONS) + "}"


def _err(message: str) -> None:
    print(f"listgate: {message}", file=sys.stderr)


def _command(fn: _Command, *, write: bool) -> Handler:
    """Wrap a command: open the store, map exceptions to ``listgate: ...`` and an exit code.

    No command but ``db init`` creates the store: a ``members add`` after the file was
    lost (a bad restore, a wrong path) must not leave a store with one list that
    silently stops gating all the others.  The Debian package runs ``db init`` at
    first install; ``make run`` runs it too.
    """

    def handler(args: argparse.Namespace, cfg: Config) -> int:
        store = open_store(cfg)
        args.cfg = cfg  # for commands that read another source (lists import --from)
        try:
            return fn(args, store)
        except ValueError as e:
            _err(str(e))
            return 2
        except (StoreError, model.BackendError) as e:
            _err(str(e))
            return 1
        except store.errors as e:
            _err(f"{store.path}: {' '.join(str(e).split())}")
            return 1
        except OSError as e:
            _err(f"{e.filename or store.path}: {e.strerror or e}")
            return 1
        finally:
            store.close()

    handler.__name__ = handler.__qualname__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def _yes_no(value: str, what: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}: expected yes or no") from None


def _warn_case(entries: Iterable[str], what: str) -> None:
    """Mailman compares exact entries to the lowercased sender: upper case never matches."""
    for e in entries:
        if not e.startswith("^") and e != e.lower():
            _err(f"warning: {what} {e!r} has upper-case letters and will never match "
                 f"(senders are compared lowercased); use {e.lower()!r}")


def _open_in(path: str) -> contextlib.AbstractContextManager[TextIO]:
    if path == "-":
        return contextlib.nullcontext(sys.stdin)
    return open(path, encoding="utf-8")


def _read_addresses(path: str) -> list[str]:
    """One address per line; blank lines and ``#`` comments ignored; errors name the line."""
    out = []
    with _open_in(path) as f:
        for n, line in enumerate(f, 1):
            # a comment is a line starting with '#' or white space then '#' (addresses
            # may contain '#' but never white space)
            text = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
            if not text:
                continue
            try:
                out.append(validate_address(text))
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
    return out


def _addresses(args: argparse.Namespace) -> list[str]:
    addrs = list(args.addresses)
    if args.file is not None:
        addrs += _read_addresses(args.file)
    if not addrs:
        raise ValueError("no addresses given (ADDR arguments or --file)")
    return addrs


def _role(args: argparse.Namespace) -> str:
    return "nonmember" if args.nonmember else "member"


# -- db


def cmd_db_init(args: argparse.Namespace, store: SqliteStore) -> int:
    """Create the store (directory, file, schema, WAL mode); harmless if it exists."""
    if store.init():
        print(f"initialised database {store.path}")
    else:
        print(f"database {store.path} is already initialised")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, store: SqliteStore) -> int:
    """Bring the store's schema to this listgate's version, in place (never creates one)."""
    if args.if_exists and not store.exists():
        # the package's upgrade, on a host whose lists live elsewhere (Mailman 3)
        print(f"no database at {store.path}: nothing to upgrade")
        return 0
    old, new = store.upgrade()
    if old == new:
        print(f"database {store.path} is at schema version {new}: nothing to do")
    else:
        print(f"upgraded database {store.path} from schema version {old} to {new}")
    return 0


# -- lists


def cmd_lists_create(args: argparse.Namespace, store: SqliteStore) -> int:
    """Create a list with Mailman 3's defaults unless options say otherwise."""
    policy = store.create_list(
        args.list,
        default_member_action=args.default_member_action,
        default_nonmember_action=args.default_nonmember_action,
        emergency=_yes_no(args.emergency, "--emergency"),
    )
    print(f"created list {policy.address}")
    return 0


def cmd_lists_delete(args: argparse.Namespace, store: SqliteStore) -> int:
    """Delete a list with its members, nonmembers and list bans."""
    store.delete_list(args.list)
    print(f"deleted list {args.list.lower()}")
    return 0


def cmd_lists_show(args: argparse.Namespace, store: SqliteStore) -> int:
    """Print the list's policy and counts as JSON."""
    policy = store.get_list(args.list)
    doc = {**dataclasses.asdict(policy), **store.counts(policy.address)}
    print(json.dumps(doc, indent=2))
    return 0


def cmd_lists_ls(args: argparse.Namespace, store: SqliteStore) -> int:
    """Print every posting address of the configured backend, one per line."""
    if args.cfg.lists.backend in ("sqlite", "postgresql"):
        addresses = store.list_lists()
    else:  # what the daemon sees: Mailman's own lists
        from listgate.backends import open_backend

        backend = open_backend(args.cfg)
        try:
            addresses = backend.lists()
        finally:
            backend.close()
    if args.json:
        print(json.dumps(list(addresses)))
        return 0
    for address in addresses:
        print(address)
    return 0


def cmd_lists_set(args: argparse.Namespace, store: SqliteStore) -> int:
    """Set one list option (lists are replaced whole)."""
    f = listsettings.list_field(args.key)
    if args.key == "approval_passwords" and args.value.strip():
        raise ValueError("set approval passwords with 'listgate lists password LIST' (it "
                         "stores a hash, never the password); '' clears them")
    policy = store.set_list_option(args.list, args.key, f.kind.cli(args.value, args.key))
    new = getattr(policy, args.key)
    if args.key in model.NONMEMBER_LISTS:
        _warn_case((e for e in new if not e.startswith("@")), f"{args.key} entry")
    print(f"{policy.address}: {args.key} = "
          f"{json.dumps(listsettings.policy_to_json(policy)[args.key])}")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    """The new password: one line of stdin (``--stdin``), else asked twice on the tty."""
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass(f"moderator password for {args.list.lower()}: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the two passwords differ; nothing changed")
    if not password:
        raise ValueError("empty password; use --clear to remove the password")
    return password


def cmd_lists_password(args: argparse.Namespace, store: SqliteStore) -> int:
    """Set (or --clear) the list's moderator password, for Approved: headers.

    Stored as a sha512_crypt hash, as Mailman 3 stores ``moderator_password``; the
    password itself is never written anywhere."""
    if args.clear:
        policy = store.set_list_option(args.list, "approval_passwords", [])
        print(f"{policy.address}: moderator password cleared")
        return 0
    store.get_list(args.list)  # the list must exist before we ask for a password
    from passlib.hash import sha512_crypt

    digest = sha512_crypt.hash(_read_password(args))
    policy = store.set_list_option(args.list, "approval_passwords", [digest])
    print(f"{policy.address}: moderator password set")
    return 0


def cmd_site_show(args: argparse.Namespace, store: SqliteStore) -> int:
    """Print the site-wide settings as JSON."""
    print(json.dumps(listsettings.site_to_json(store.site()), indent=2))
    return 0


def cmd_site_set(args: argparse.Namespace, store: SqliteStore) -> int:
    """Set one site-wide setting (as Mailman 3's [antispam] and [mailman] sections)."""
    f = listsettings.site_field(args.key)
    site = store.set_site_option(args.key, f.kind.cli(args.value, args.key))
    print(f"site: {args.key} = {json.dumps(getattr(site, args.key))}")
    return 0


def cmd_lists_export(args: argparse.Namespace, store: SqliteStore) -> int:
    """Write the whole store as JSON (atomically when writing a file)."""
    text = json.dumps(store.export_json(), indent=2) + "\n"
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    # a temporary file in the same directory, renamed into place: a crash or a full
    # disk never leaves a truncated backup behind (and it is created mode 0600)
    directory = os.path.dirname(os.path.abspath(args.file))
    fd, tmp = tempfile.mkstemp(prefix=".listgate-export-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return 0


def _read_source(args: argparse.Namespace) -> dict[str, Any]:
    """The export document to import: a JSON file, or read from a list manager."""
    if args.source_type == "mailman3":
        from listgate.backends import mailman3

        m3 = args.cfg.mailman3
        backend = mailman3.Mailman3Backend(args.file, m3.user, mailman3.read_password(args.cfg),
                                           m3.timeout, ca_file=mailman3.ca_file(args.cfg))
        try:
            return mailman3.export(backend)
        finally:
            backend.close()
    if args.source_type == "mailman2":
        from listgate.backends import mailman2

        return mailman2.export(args.file, args.cfg)
    with _open_in(args.file) as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{args.file}: not valid JSON: {e}") from None


def cmd_lists_import(args: argparse.Namespace, store: SqliteStore) -> int:
    """Sync the store with an export file, or with a Mailman 3 or Mailman 2 installation."""
    data = _read_source(args)
    try:
        summary = store.import_json(data, prune=args.prune)
    except ValueError as e:
        raise ValueError(f"{args.file}: {e}") from None
    for lst in data["lists"]:
        for key in model.NONMEMBER_LISTS:
            _warn_case((e for e in lst.get(key, []) if not e.startswith("@")),
                       f"{lst['address']} {key} entry")
    _warn_case((b["entry"] for b in data.get("bans", [])), "ban entry")
    line = (f"imported {summary['lists']} lists ({summary['members']} members, "
            f"{summary['nonmembers']} nonmembers)")
    if "bans" in data:
        line += f", {summary['bans']} bans"
    if args.prune:
        line += f"; pruned {summary['pruned']} lists"
    print(line)
    return 0


# -- members


def cmd_members_add(args: argparse.Namespace, store: SqliteStore) -> int:
    """Add or update members (or nonmember records) from arguments and/or a file."""
    addrs = _addresses(args)
    role = _role(args)
    n = store.add_members(args.list, addrs, role=role, moderation_action=args.moderation_action)
    print(f"{args.list.lower()}: added or updated {n} {role}s")
    return 0


def cmd_members_remove(args: argparse.Namespace, store: SqliteStore) -> int:
    """Remove members (or nonmember records); addresses that were not there are reported."""
    addrs = _addresses(args)
    role = _role(args)
    n = store.remove_members(args.list, addrs, role=role)
    wanted = len(dict.fromkeys(a.lower() for a in addrs))
    print(f"{args.list.lower()}: removed {n} of {wanted} {role}s")
    return 0


def cmd_members_ls(args: argparse.Namespace, store: SqliteStore) -> int:
    """Print ``address<TAB>action`` per line; ``default`` = no action of its own.

    With --json: ``[{"address": ..., "moderation_action": null or an action}, ...]``."""
    rows = store.members(args.list, role=_role(args))
    if args.json:
        print(json.dumps([{"address": a, "moderation_action": m} for a, m in rows]))
        return 0
    for address, action in rows:
        print(f"{address}\t{action or 'default'}")
    return 0


# -- bans


def cmd_bans_add(args: argparse.Namespace, store: SqliteStore) -> int:
    """Ban addresses or ``^patterns`` on one list or globally."""
    where = args.list.lower() if args.list else "global"
    for entry in args.entries:  # all or nothing: validate every entry before the first write
        validate_ban_entry(entry)
    _warn_case(args.entries, "ban entry")
    for entry in args.entries:
        new = store.add_ban(entry, list=args.list)
        print(f"{where}: banned {entry}" if new else f"{where}: {entry} was already banned")
    return 0


def cmd_bans_remove(args: argparse.Namespace, store: SqliteStore) -> int:
    """Lift bans; an entry that was not banned is reported, not an error."""
    where = args.list.lower() if args.list else "global"
    for entry in args.entries:
        gone = store.remove_ban(entry, list=args.list)
        print(f"{where}: unbanned {entry}" if gone else f"{where}: {entry} was not banned")
    return 0


def cmd_bans_ls(args: argparse.Namespace, store: SqliteStore) -> int:
    """Print the ban entries of one list, or the global ones."""
    entries = store.bans(list=args.list)
    if args.json:
        print(json.dumps(list(entries)))
        return 0
    for entry in entries:
        print(entry)
    return 0


# -- argparse wiring

#: other names of a subcommand (``ls`` is also ``list``, ``remove``/``delete`` also ``rm``)
ALIASES = {"ls": ["list"], "remove": ["rm"], "delete": ["rm"]}

#: the admin commands' exit status, in every --help and in listgate(8)
EXIT_STATUS = ("exit status: 0 success; 1 operational error (no such list, no database, "
               "I/O); 2 usage or validation error (a bad address, action or option)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parent: argparse.ArgumentParser) -> None:
    """Add ``db``, ``lists``, ``members`` and ``bans`` to the ``listgate`` command line.

    ``parent`` carries the common options (``-c/--config``); it is given to the leaf
    parsers only, so ``listgate lists ls -c FILE`` works and no intermediate
    parser's defaults can overwrite a value parsed elsewhere.
    """

    def group(name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        p = subparsers.add_parser(name, help=help, description=help)
        return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)

    def leaf(group_: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
             fn: _Command, write: bool) -> argparse.ArgumentParser:
        doc = (fn.__doc__ or "").strip().split("\n\n")[0]
        # the names admins type from other tools' habits: `members list` as well as ls
        aliases = ALIASES.get(name, [])
        p = group_.add_parser(name, parents=[parent], help=doc, description=doc,
                              aliases=aliases, epilog=EXIT_STATUS)
        p.set_defaults(func=_command(fn, write=write))
        return p

    def json_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true",
                       help="print one JSON array instead of lines")

    db = group("db", "manage the store (the SQLite file, or the PostgreSQL database)")
    leaf(db, "init", cmd_db_init, write=False)  # init is the command itself
    p = leaf(db, "upgrade", cmd_db_upgrade, write=False)
    p.add_argument("--if-exists", action="store_true",
                   help="a missing database is not an error (nothing to upgrade)")
    from listgate import dbcopy

    dbcopy.register(db, leaf)

    lists = group("lists", "create, configure, export and import lists")
    p = leaf(lists, "create", cmd_lists_create, write=True)
    p.add_argument("list", metavar="LIST", help="posting address, name@domain")
    p.add_argument("--default-member-action", default="defer", metavar=_ACTION_METAVAR,
                   help="action for members without their own (default: defer)")
    p.add_argument("--default-nonmember-action", default="hold", metavar=_ACTION_METAVAR,
                   help="action for nonmembers no entry matched (default: hold)")
    p.add_argument("--emergency", default="no", metavar="yes|no",
                   help="hold every post (default: no)")
    p = leaf(lists, "delete", cmd_lists_delete, write=True)
    p.add_argument("list", metavar="LIST")
    p = leaf(lists, "show", cmd_lists_show, write=False)
    p.add_argument("list", metavar="LIST")
    json_option(leaf(lists, "ls", cmd_lists_ls, write=False))
    p = leaf(lists, "set", cmd_lists_set, write=True)
    p.add_argument("list", metavar="LIST")
    p.add_argument("key", metavar="KEY", help=", ".join(LIST_OPTIONS))
    p.add_argument("value", metavar="VALUE",
                   help="an action; yes/no for the flags; a number for the limits; for the "
                        "lists comma-separated entries or a JSON array ('' clears); "
                        "header_matches a JSON array of objects")
    p = leaf(lists, "password", cmd_lists_password, write=True)
    p.add_argument("list", metavar="LIST")
    p.add_argument("--stdin", action="store_true",
                   help="read the password from the first line of stdin (no prompt)")
    p.add_argument("--clear", action="store_true", help="remove the moderator password")
    p = leaf(lists, "export", cmd_lists_export, write=False)
    p.add_argument("file", metavar="FILE.json", help="'-' for stdout")
    p = leaf(lists, "import", cmd_lists_import, write=True)
    p.add_argument("file", metavar="SOURCE",
                   help="FILE.json ('-' for stdin); with --from mailman3 Mailman's REST URL "
                        "(e.g. http://127.0.0.1:8001/3.1, credentials from [mailman3]); with "
                        "--from mailman2 its lists directory (e.g. /var/lib/mailman/lists)")
    p.add_argument("--from", dest="source_type", default="json",
                   choices=("json", "mailman3", "mailman2"),
                   help="what SOURCE is (default: json)")
    p.add_argument("--prune", action="store_true",
                   help="also delete lists the source does not have")

    site = group("site", "the site-wide settings (Mailman 3's [antispam] and [mailman])")
    leaf(site, "show", cmd_site_show, write=False)
    p = leaf(site, "set", cmd_site_set, write=True)
    p.add_argument("key", metavar="KEY",
                   help=", ".join(f.name for f in listsettings.SITE_FIELDS))
    p.add_argument("value", metavar="VALUE")

    members = group("members", "add, remove and list members and nonmember records")
    for name, fn in (("add", cmd_members_add), ("remove", cmd_members_remove)):
        p = leaf(members, name, fn, write=True)
        p.add_argument("list", metavar="LIST")
        p.add_argument("addresses", metavar="ADDR", nargs="*")
        p.add_argument("--file", "-f", metavar="F",
                       help="one address per line, '#' comments; '-' for stdin")
        p.add_argument("--nonmember", action="store_true",
                       help="nonmember records instead of members")
        if name == "add":
            p.add_argument("--moderation-action", metavar=_ACTION_METAVAR,
                           help="the address's own action (default: none, i.e. the list's)")
    p = leaf(members, "ls", cmd_members_ls, write=False)
    p.add_argument("list", metavar="LIST")
    p.add_argument("--nonmember", action="store_true", help="nonmember records")
    json_option(p)

    bans = group("bans", "ban addresses or ^patterns, per list or globally")
    for name, fn in (("add", cmd_bans_add), ("remove", cmd_bans_remove)):
        p = leaf(bans, name, fn, write=True)
        p.add_argument("entries", metavar="ENTRY", nargs="+", help="address or ^regexp")
        p.add_argument("--list", metavar="LIST", help="a list's ban (default: global)")
    p = leaf(bans, "ls", cmd_bans_ls, write=False)
    p.add_argument("--list", metavar="LIST", help="a list's bans (default: global)")
    json_option(p)
