"""The Mailman 2.1 backend: read each list's ``config.pck`` directly, as Mailman does.

Mailman 2 keeps a list's whole configuration and roster in
``<lists_dir>/<name>/config.pck``, a Python 2 pickle (protocol 1) of a dict of the
list's attributes.  This backend reads what Mailman 2.1.39's posting pipeline reads
-- ``host_name``, ``members``, ``digest_members``, ``user_options`` (the moderate
flag, 128), ``member_moderation_action``, ``generic_nonmember_action``,
``emergency``, ``equivalent_domains``, the four ``*_these_nonmembers`` lists,
``password``, ``mod_password`` and ``post_password`` (SHA-1 hex digests),
``header_filter_rules``, ``bounce_matching_headers``, ``max_message_size``,
``max_num_recipients``, ``require_explicit_destination``, ``acceptable_aliases``,
``administrivia``, the ``dmarc_*`` settings, ``gateway_to_news`` and
``news_moderation``, the reject notices, and a ``pipeline`` of the list's own -- and
hands them, with what the list knows of the post's ``get_senders()``, to
:data:`listgate.chain.MAILMAN2_PIPELINE` (:mod:`listgate.rules.mailman2`).

The site password (``<var_prefix>/data/adm.pw``) is not read: ``Approve.py`` passes
only the poster, moderator and administrator contexts to ``Authenticate`` ("We are
specifically /not/ allowing the site admins password to work here"), so it never
approves a post.

Safety.  A pickle can name any Python callable, so it is never ``pickle.load``-ed:
a restricted unpickler resolves exactly one class, ``Mailman.Bouncer._BounceInfo``
(the values of ``bounce_info``), to a harmless stub, and refuses the file when it
names anything else (``mailman2 PATH: refusing to load Mailman 2 data: it
references os.system``) -- before anything is called.  Only pickle protocols 0-2
(Python 2's) are accepted.  Strings are decoded as latin-1 (lossless: Python 2 str
is bytes) and then, where they are valid UTF-8, as UTF-8.

Posting addresses.  A list's posting address is ``<name>@<host_name>``: the
directory name (Mailman's internal name, lowercase) at the list's ``host_name``.
``[mailman2] domains`` adds ``<name>@<domain>`` for each domain named there, for
MTAs that route whole domains to Mailman by local part (aliases, a transport map):
there every list receives mail at every such domain.  It does not restrict: a
list at a host_name not named there still receives mail addressed to it, so it is
still gated.  ``-request``, ``-owner``, ``-bounces``... are never posting addresses.

Freshness.  The directory is rescanned when its mtime changes (a list created or
removed) and at least every :attr:`Mailman2Backend.RESCAN_INTERVAL` seconds (a
changed ``host_name``); a list's file is re-read only when its (device, inode, size,
mtime) changed -- Mailman writes it to a temporary file and renames it into place,
so a reader sees either the old file or the new one, whole.  listgate takes none of
Mailman's locks and never writes.  Only the attributes above are kept in memory.

Errors.  A missing, unreadable or corrupt file, or one of the wrong shape, is a
:class:`~listgate.model.BackendError` ``mailman2 PATH: cause`` (the engine answers
451, or ``on_backend_error``).  Mailman itself would fall back to
``config.pck.last``; listgate does not guess and tempfails instead.  A list whose
file cannot be read keeps its posting addresses failing (if its host_name was never
read, every ``<name>@...`` address fails) rather than letting posts through ungated.

Differences from Mailman 2.1: ``^`` patterns run under Python 3's ``re`` on the
bytes, as Python 2 matches byte strings; a pattern Python 3 refuses (Python 2 took
some, such as unknown escapes) is not judged -- a miss where it could only refuse,
the post left to Mailman where it could have let it through.  For a nonmember post
every list named by an ``@name`` entry is read, where Mailman stops at the first
matching entry, so an unreadable one is a BackendError even where an earlier entry
would have decided.  Strings are kept as text (UTF-8, else latin-1), so a non-ASCII
``header_filter_rules`` pattern, which Mailman decodes with the list's charset, is
not judged either.  Site settings live in ``mm_cfg.py``, Python code listgate does
not run: ``KNOWN_SPAMMERS`` (it can only discard) is not evaluated, and
``GLOBAL_PIPELINE``, ``SENDER_HEADERS``, ``USE_ENVELOPE_SENDER``, ``NORMALIZE_FORM``
and ``DEFAULT_MAIL_COMMANDS_MAX_LINES`` are taken at their defaults.  What depends on
Mailman's running state is not evaluated: ``member_verbosity_threshold``
auto-moderation and the content filter (``MimeDel``), which can only refuse more;
nor Approve's rejection of a post whose HTML part repeats the body's Approved: line
in a form it cannot remove.  Approve removes that line (re-encoding the part), so
Hold's administrivia and size checks are not judged on such a post.
The headers the MTA adds after listgate (Received, Return-Path, Delivered-To) are not
seen: a header_filter_rules accept pattern that could match them leaves a later
refusal to Mailman.  The null envelope sender is '' here; Mailman 2 sees the MTA's
``From MAILER-DAEMON`` line.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from listgate import model
from listgate.config import Config
from listgate.mm2compat import ascii_lower

#: ``user_options`` bit of the moderate flag (Mailman 2 ``mm_cfg.Moderate``)
MODERATE = 128

#: the only class a Mailman 2.1 config.pck contains
_ALLOWED_CLASS = ("Mailman.Bouncer", "_BounceInfo")


class _BounceInfo:
    """Stands in for ``Mailman.Bouncer._BounceInfo`` (the values of ``bounce_info``).

    listgate never looks at bounce data; the unpickler only needs something
    inert to build.  Accepting any arguments keeps odd but harmless pickles loadable.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass


class _Refused(pickle.UnpicklingError):
    """The pickle names a callable other than the allowed class."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _Unpickler(pickle.Unpickler):
    """Resolves ``Mailman.Bouncer._BounceInfo`` to a stub and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _ALLOWED_CLASS:
            return _BounceInfo
        raise _Refused(f"{module}.{name}")


def _printable(text: str, limit: int = 300) -> str:
    """``text`` with control characters escaped and cut to ``limit``: names read from
    a (possibly hostile) file end up in log lines."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _error(path: str, cause: str) -> model.BackendError:
    return model.BackendError(f"mailman2 {path}: {_printable(cause)}")


def _cause(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def load_config(path: str) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Read a Mailman 2 ``config.pck`` safely: (file identity, dict of attributes).

    Raises BackendError naming ``path`` on any failure, and refuses (before
    calling anything) a pickle that names any callable but ``_BounceInfo``.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise _error(path, f"cannot read: {_cause(e)}") from None
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if data[:1] == b"\x80" and len(data) > 1 and data[1] > 2:
        raise _error(path, f"not a Mailman 2 list file: pickle protocol {data[1]} "
                           "(Python 2 writes 0 to 2)")
    try:
        value = _Unpickler(io.BytesIO(data), encoding="latin-1").load()
    except _Refused as e:
        raise _error(path, f"refusing to load Mailman 2 data: it references {e.what}") from None
    except RecursionError:
        raise _error(path, "corrupt list file: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is "corrupt", never a crash
        raise _error(path, f"corrupt list file: {type(e).__name__}: {_cause(e)}") from None
    if not isinstance(value, dict):
        raise _error(path, f"not a Mailman 2 list file: a pickled {type(value).__name__}, "
                           "not a dict of list attributes")
    return ident, value


# -- turning Python 2 values into the plain ones listgate works with


def _text(value: Any) -> str | None:
    """A Python 2 str (latin-1 decoded, or bytes) or unicode -> str; None if not text.

    Python 2 str is bytes; addresses and patterns in it are normally ASCII or
    UTF-8, so a non-ASCII value that is valid UTF-8 is read as such.
    """
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        if value.isascii():
            return value
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            return value  # a real unicode string (BINUNICODE)
    else:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _BadData(ValueError):
    """An attribute of the wrong type; the message names it."""


def _str_attr(d: Mapping[str, Any], key: str, default: str = "") -> str:
    value = d.get(key, default)
    text = _text(value)
    if text is None:
        raise _BadData(f"{key} is a {type(value).__name__}, not a string")
    return text


def _int_attr(d: Mapping[str, Any], key: str, default: int) -> int:
    value = d.get(key, default)
    if not isinstance(value, int):
        raise _BadData(f"{key} is a {type(value).__name__}, not a number")
    return int(value)


def _entries(d: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = d.get(key, [])
    if not isinstance(value, list | tuple):
        raise _BadData(f"{key} is a {type(value).__name__}, not a list")
    out = []
    for item in value:
        text = _text(item)
        if text is None:
            raise _BadData(f"{key} holds a {type(item).__name__}, not a string")
        out.append(text)
    return tuple(out)


def _addresses(d: Mapping[str, Any], key: str) -> Iterable[tuple[str, Any]]:
    """(lowercased address, value) for a dict keyed by address (lowercased as Python 2
    lowercases a byte string: A-Z only)."""
    value = d.get(key, {})
    if not isinstance(value, dict):
        raise _BadData(f"{key} is a {type(value).__name__}, not a dict")
    for k, v in value.items():
        text = _text(k)
        if text is None:
            raise _BadData(f"{key} has a {type(k).__name__} key, not an address")
        yield ascii_lower(text), v


_SHA1_HEX = re.compile(r"[0-9a-f]{40}")


def _password(d: Mapping[str, Any], key: str) -> tuple[str | None, bool]:
    """A stored list password: (``{sha1}HEX`` or None, stored in a pre-2.1 form).

    Mailman 2.1 keeps ``password``, ``mod_password`` and ``post_password`` as SHA-1
    hex digests; ``SecurityManager.Authenticate`` also takes an administrator
    password still stored as an MD5 digest or a crypt() hash (and rewrites it as SHA-1
    when it is used).  None, '' or a missing attribute: no such password."""
    value = d.get(key)
    if value is None or value == "":
        return None, False
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        raise _BadData(f"{key} is a {type(value).__name__}, not a string")
    if _SHA1_HEX.fullmatch(value):
        return "{sha1}" + value, False
    return None, key == "password"


def _filter_rules(d: Mapping[str, Any]) -> tuple[model.HeaderFilterRule, ...]:
    """``header_filter_rules``: a list of (patterns, action, empty) tuples."""
    value = d.get("header_filter_rules", [])
    if not isinstance(value, list | tuple):
        raise _BadData(f"header_filter_rules is a {type(value).__name__}, not a list")
    out = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) < 2 or \
                not isinstance(item[1], int) or _text(item[0]) is None:
            raise _BadData("header_filter_rules holds something other than "
                           "(patterns, action, empty)")
        out.append(model.HeaderFilterRule(_text(item[0]) or "", int(item[1])))
    return tuple(out)


def _pipeline(d: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The list's own ``pipeline`` attribute (``IncomingRunner._get_pipeline``), if any."""
    if "pipeline" not in d:
        return None
    names = _entries(d, "pipeline")
    return None if names == model.MAILMAN2_GLOBAL_PIPELINE else names


@dataclass(frozen=True)
class ListData(model.Mailman2Settings):
    """What listgate keeps of one Mailman 2 list (everything else is dropped)."""

    name: str  #: internal name (the directory under lists_dir)
    host_name: str  #: lowercased; '' if the file has none
    emergency: bool
    member_moderation_action: int
    generic_nonmember_action: int
    equivalent_domains: str
    accept_these_nonmembers: tuple[str, ...]
    hold_these_nonmembers: tuple[str, ...]
    reject_these_nonmembers: tuple[str, ...]
    discard_these_nonmembers: tuple[str, ...]
    members: frozenset[str]
    digest_members: frozenset[str]
    #: addresses whose ``user_options`` have the moderate flag
    moderated: frozenset[str]

    @classmethod
    def from_config(cls, name: str, d: Mapping[str, Any]) -> ListData:
        """The attributes of a loaded config.pck; _BadData if one has the wrong type.

        A missing attribute gets Mailman 2.1's default, as Mailman's own
        ``CheckVersion`` would give it -- except ``bounce_matching_headers``, whose
        default for new lists is a few sample lines: none here.
        """
        digests = []
        legacy = False
        for key in ("post_password", "mod_password", "password"):
            digest, old = _password(d, key)
            legacy = legacy or old
            if digest is not None and digest not in digests:
                digests.append(digest)
        return cls(
            name=name,
            host_name=_str_attr(d, "host_name").strip().lower().rstrip("."),
            emergency=bool(_int_attr(d, "emergency", 0)),
            member_moderation_action=_int_attr(d, "member_moderation_action", 0),
            generic_nonmember_action=_int_attr(d, "generic_nonmember_action", 1),
            equivalent_domains=_str_attr(d, "equivalent_domains"),
            accept_these_nonmembers=_entries(d, "accept_these_nonmembers"),
            hold_these_nonmembers=_entries(d, "hold_these_nonmembers"),
            reject_these_nonmembers=_entries(d, "reject_these_nonmembers"),
            discard_these_nonmembers=_entries(d, "discard_these_nonmembers"),
            members=frozenset(a for a, _v in _addresses(d, "members")),
            digest_members=frozenset(a for a, _v in _addresses(d, "digest_members")),
            moderated=frozenset(a for a, v in _addresses(d, "user_options")
                                if isinstance(v, int) and v & MODERATE),
            approval_passwords=tuple(digests),
            legacy_admin_password=legacy,
            header_filter_rules=_filter_rules(d),
            bounce_matching_headers=_str_attr(d, "bounce_matching_headers"),
            max_message_size=_int_attr(d, "max_message_size", 40),
            max_num_recipients=_int_attr(d, "max_num_recipients", 10),
            require_explicit_destination=bool(_int_attr(d, "require_explicit_destination", 1)),
            acceptable_aliases=_str_attr(d, "acceptable_aliases"),
            administrivia=bool(_int_attr(d, "administrivia", 1)),
            dmarc_moderation_action=_int_attr(d, "dmarc_moderation_action", 0),
            dmarc_quarantine_moderation_action=bool(
                _int_attr(d, "dmarc_quarantine_moderation_action", 1)),
            dmarc_moderation_addresses=_entries(d, "dmarc_moderation_addresses"),
            dmarc_moderation_notice=_str_attr(d, "dmarc_moderation_notice"),
            member_moderation_notice=_str_attr(d, "member_moderation_notice"),
            nonmember_rejection_notice=_str_attr(d, "nonmember_rejection_notice"),
            gateway_to_news=bool(_int_attr(d, "gateway_to_news", 0)),
            news_moderation=_int_attr(d, "news_moderation", 0),
            pipeline=_pipeline(d),
        )

    def is_member(self, address: str) -> bool:
        """Mailman 2 ``isMember``: in members or digest_members, case-insensitively
        (ASCII: Python 2 lowercases byte strings)."""
        a = ascii_lower(address)
        return a in self.members or a in self.digest_members

    def member_as(self, sender: str) -> str | None:
        """The member address Moderate.py finds for ``sender`` (itself, or through
        ``equivalent_domains``), or None."""
        if self.is_member(sender):
            return ascii_lower(sender)
        for variant in check_eq_domains(sender, self.equivalent_domains):
            if self.is_member(variant):
                return ascii_lower(variant)
        return None


def check_eq_domains(email: str, domains_list: str) -> list[str]:
    """Mailman 2.1 ``Utils.check_eq_domains``: ``email`` at the other domains of its
    group in ``domains_list`` (``'a.org,b.org;mac.com,me.com'``), or []."""
    if not domains_list or "@" not in email:
        return []
    local, domain = email.rsplit("@", 1)
    domain = domain.lower()
    groups = "".join(domains_list.split()).lower().split(";")
    for group in groups:
        domains = group.split(",")
        if domain in domains:
            return [f"{local}@{d}" for d in domains if d != domain]
    return []


def _safe_name(name: str) -> bool:
    """A list name that is one directory entry (an ``@name`` entry is not a path)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name \
        and (os.sep == "/" or os.sep not in name)


@dataclass(frozen=True)
class _Index:
    """One scan of lists_dir."""

    dir_ident: tuple[int, ...]
    scanned: float  #: monotonic time of the scan
    addresses: dict[str, str]  #: posting address -> internal name
    #: internal name -> (the error, the host_name last read or None) for lists
    #: whose file could not be read
    broken: dict[str, tuple[model.BackendError, str | None]]


class Mailman2Backend(model.Backend):
    """Mailman 2.1 lists read from their ``config.pck`` files.  Safe from many threads:
    one lock guards the caches (never held during I/O), another makes sure only one
    thread rescans the directory at a time."""

    name = "mailman2"
    #: Mailman 2 judges members by ``get_senders()``: raw header values, not decoded
    senders_as = "mailman2"
    #: seconds between rescans of lists_dir when its mtime did not change
    RESCAN_INTERVAL = 5.0

    def __init__(self, lists_dir: str, domains: Sequence[str] = ()) -> None:
        self.lists_dir = lists_dir
        self.domains = tuple(d.lower().rstrip(".") for d in domains)
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        #: internal name -> (file identity, data)
        self._lists: dict[str, tuple[tuple[int, ...], ListData]] = {}
        self._index: _Index | None = None

    def path(self, name: str) -> str:
        """The config.pck of list ``name``."""
        return os.path.join(self.lists_dir, name, "config.pck")

    # -- reading lists

    def _load(self, name: str, known_ident: tuple[int, ...] | None = None) -> ListData:
        """The list's data, re-read only if its file changed.  BackendError on failure."""
        path = self.path(name)
        if known_ident is None:
            try:
                st = os.stat(path)
            except OSError as e:
                raise _error(path, f"cannot read: {_cause(e)}") from None
            known_ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._lists.get(name)
        if hit is not None and hit[0] == known_ident:
            return hit[1]
        ident, d = load_config(path)
        try:
            data = ListData.from_config(name, d)
        except _BadData as e:
            raise _error(path, f"not a Mailman 2 list file: {e}") from None
        with self._lock:
            self._lists[name] = (ident, data)
        return data

    def _load_referenced(self, name: str) -> ListData | None:
        """The list an ``@name`` entry names, or None if there is no such list
        (Mailman ignores the entry then)."""
        if not _safe_name(name):
            return None
        try:
            st = os.stat(self.path(name))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as e:
            raise _error(self.path(name), f"cannot read: {_cause(e)}") from None
        return self._load(name, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))

    # -- the directory index

    def _scan(self, dir_ident: tuple[int, ...]) -> _Index:
        try:
            with os.scandir(self.lists_dir) as it:
                names = sorted(e.name for e in it if e.is_dir())
        except OSError as e:
            raise _error(self.lists_dir, f"cannot list: {_cause(e)}") from None
        addresses: dict[str, str] = {}
        broken: dict[str, tuple[model.BackendError, str | None]] = {}
        found = set()
        for name in names:
            path = self.path(name)
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue  # not a list (Mailman's list_exists)
            except OSError as e:
                st, err = None, _error(path, f"cannot read: {_cause(e)}")
            found.add(name)
            local = name.lower()
            for d in self.domains:
                addresses[f"{local}@{d}"] = name
            if st is not None:
                try:
                    data = self._load(name, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
                except model.BackendError as e:
                    err = e
                else:
                    if data.host_name:
                        addresses[f"{local}@{data.host_name}"] = name
                    continue
            # unreadable: keep failing at its addresses rather than let posts through
            with self._lock:
                old = self._lists.get(name)
            broken[name] = (err, old[1].host_name if old else None)
        with self._lock:
            for gone in set(self._lists) - found:
                del self._lists[gone]
        return _Index(dir_ident, time.monotonic(), addresses, broken)

    def _current_index(self) -> _Index:
        try:
            st = os.stat(self.lists_dir)
        except OSError as e:
            raise _error(self.lists_dir, f"cannot read: {_cause(e)}") from None
        dir_ident = (st.st_dev, st.st_ino, st.st_mtime_ns)

        def fresh(index: _Index | None) -> bool:
            return (index is not None and index.dir_ident == dir_ident
                    and time.monotonic() < index.scanned + self.RESCAN_INTERVAL)

        with self._lock:
            index = self._index
        if fresh(index):
            return index  # type: ignore[return-value]
        with self._scan_lock:
            with self._lock:
                index = self._index
            if fresh(index):  # another thread just scanned
                return index  # type: ignore[return-value]
            index = self._scan(dir_ident)
            with self._lock:
                self._index = index
            return index

    def _broken_for(self, index: _Index, address: str) -> model.BackendError | None:
        """The error of an unreadable list ``address`` may be the posting address of."""
        local, _, domain = address.rpartition("@")
        for name, (err, host_name) in index.broken.items():
            if name.lower() == local and (host_name is None or domain == host_name
                                          or domain in self.domains):
                return err
        return None

    # -- the Backend interface

    def lists(self) -> list[str]:
        """name@host_name of every readable list (the ``domains`` forms are extra)."""
        index = self._current_index()
        with self._lock:
            return sorted(f"{name.lower()}@{data.host_name}"
                          for name, (_ident, data) in self._lists.items()
                          if name in index.addresses.values() and data.host_name)

    def find_list(self, address: str) -> str | None:
        addr = address.lower()
        index = self._current_index()
        if addr in index.addresses:
            return addr
        err = self._broken_for(index, addr)
        if err is not None:
            raise err
        return None

    def list_facts(self, list_address: str, senders: Sequence[str],
                   primary: str = "", max_age: float | None = None) -> model.Mailman2Facts:
        addr = list_address.lower()
        index = self._current_index()
        name = index.addresses.get(addr)
        if name is None:
            err = self._broken_for(index, addr)
            raise err if err is not None else _error(self.lists_dir, f"no such list: {addr}")
        data = self._load(name)
        primary = ascii_lower(primary)
        sender_facts = []
        for s in dict.fromkeys(ascii_lower(a) for a in senders):
            member = data.member_as(s)
            sender_facts.append(model.Mailman2Sender(
                address=s,
                member=member,
                digest=member is not None and member not in data.members,
                moderated=member is not None and member in data.moderated,
            ))
        member_of: set[str] = set()
        if primary and not any(s.member for s in sender_facts):
            # only nonmember posts reach the @name entries (in all four lists)
            for key in model.NONMEMBER_LISTS:
                for entry in getattr(data, key):
                    if not entry.startswith("@"):
                        continue
                    ref = entry[1:].lower().strip()
                    if ref == data.name or ref in member_of:
                        continue  # Mailman: "references own list"
                    other = self._load_referenced(ref)
                    if other is not None and other.is_member(primary):
                        member_of.add(ref)
        return model.Mailman2Facts(
            list_address=addr,
            internal_name=data.name,
            host_name=data.host_name,
            emergency=data.emergency,
            member_moderation_action=data.member_moderation_action,
            generic_nonmember_action=data.generic_nonmember_action,
            accept_these_nonmembers=data.accept_these_nonmembers,
            hold_these_nonmembers=data.hold_these_nonmembers,
            reject_these_nonmembers=data.reject_these_nonmembers,
            discard_these_nonmembers=data.discard_these_nonmembers,
            senders=tuple(sender_facts),
            primary=primary,
            primary_member_of=frozenset(member_of),
            **{name: getattr(data, name) for name in _PIPELINE_SETTINGS},
        )

    def close(self) -> None:
        """Forget every cached list (they are read again when next needed)."""
        with self._lock:
            self._lists.clear()
            self._index = None


#: the ListData attributes handed on to Mailman2Facts as they are
_PIPELINE_SETTINGS = tuple(f.name for f in dataclasses.fields(model.Mailman2Settings))


def create(cfg: Config) -> Mailman2Backend:
    """The factory :func:`listgate.backends.open_backend` calls."""
    return Mailman2Backend(cfg.mailman2.lists_dir, cfg.mailman2.domains)


# -- `listgate lists import --from mailman2 DIR`

_MEMBER_ACTIONS = {0: "hold", 1: "reject", 2: "discard"}
_NONMEMBER_ACTIONS = {0: "accept", 1: "hold", 2: "reject", 3: "discard"}


def mailman3_entry(entry: str) -> str:
    """A Mailman 2 nonmember entry in the form Mailman 3's rules (and the store) use.

    Plain entries: Mailman 2 compares them case-insensitively, Mailman 3 exactly
    against the lowercased sender, so they are lowercased.  ``^`` patterns: Mailman 2
    runs ``re.search(entry, sender, IGNORECASE)``, Mailman 3 ``re.match(entry,
    sender)``; ``^.*?(?i:ENTRY)`` matches exactly where the former searches, including
    alternations such as ``^a|b`` (b anywhere).
    """
    if entry.startswith("^"):
        return f"^.*?(?i:{entry})"
    return entry.strip().lower()


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern, re.IGNORECASE)
    except (re.error, OverflowError, RecursionError):
        return False
    return True


# -- what the store can say of the pipeline's settings


def _scan_regexp(pattern: str) -> tuple[bool, bool]:
    """(an unescaped ``|`` outside groups and classes, an unescaped ``^`` or ``$`` or a
    ``(?`` other than ``(?:`` outside classes): what keeps a pattern from being moved
    from one subject string to another unchanged."""
    depth, i, in_class = 0, 0, False
    top_alt = anchors = False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if pattern[i + 1:i + 2] in ("A", "Z", "b", "B"):
                anchors = True
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":
                i += 1
        elif c == "(":
            if pattern[i + 1:i + 2] == "?" and pattern[i + 2:i + 3] != ":":
                anchors = True
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            top_alt = True
        elif c in "^$":
            anchors = True
        i += 1
    return top_alt, anchors


_NAMED = re.compile(r"\^((?:[A-Za-z0-9_]|-|\\-)+):(.*)\Z", re.DOTALL)


def header_match_of(line: str) -> tuple[str, str] | None:
    """A ``header_filter_rules`` pattern as a Mailman 3 header match (header, regexp)
    that matches no more than Mailman 2's, or None where none does.

    Mailman 2 searches ``Name: value`` lines of all the headers; Mailman 3 a regexp in
    the values of one header.  So only ``^Name:`` + REST translates, REST without a
    top-level ``|`` or anchors, and REST must start as Mailman 2's text does after the
    colon, with the one blank before the value: `` X`` (then ``^X``), ``\\s*X``,
    ``\\s+X`` (``^\\s*X``), ``.*X`` or ``.+X`` (``^.*X``), or nothing (the header is
    there).  Mailman 2's ``xml_to_unicode`` and NFKC are applied first; a non-ASCII
    pattern, whose bytes listgate no longer knows, does not translate."""
    import unicodedata

    from listgate.mm2compat import xml_to_unicode

    if not line.isascii():
        return None
    line = unicodedata.normalize("NFKC", xml_to_unicode(line))
    mo = _NAMED.match(line)
    if mo is None:
        return None
    header, rest = mo.group(1).replace("\\-", "-").lower(), mo.group(2)
    top_alt, anchors = _scan_regexp(rest)
    if top_alt or anchors or "\n" in rest or "\\n" in rest:
        return None
    if rest == "":
        pattern = ""
    elif rest.startswith(" ") and rest[1:2] not in ("*", "+", "?", "{"):
        pattern = f"^(?:{rest[1:]})"
    elif rest.startswith(("\\s*", " *")):
        pattern = f"^(?:{rest})"
    elif rest.startswith("\\s+"):
        pattern = f"^(?:\\s*{rest[3:]})"
    elif rest.startswith((".*", ".+")):
        pattern = f"^(?:.*{rest[2:]})"
    else:
        return None
    return (header, pattern) if _compiles(pattern) else None


_FILTER_ACTIONS = {2: "reject", 3: "discard", 7: "hold"}


def export_header_matches(data: ListData, address: str, log: Any) -> list[dict[str, Any]]:
    """The list's ``header_filter_rules`` as Mailman 3 header matches, in order, each
    refusing pattern that translates (:func:`header_match_of`).  An accept rule
    cannot be said (Mailman 3's accept skips moderation too; Mailman 2's only ends the
    header rules): the patterns after it could refuse what Mailman 2 accepts, so they
    are dropped with it.  Dropped patterns are warned about: the store then refuses
    less than Mailman 2, never more."""
    out: list[dict[str, Any]] = []
    dropping = False
    for rule in data.header_filter_rules:
        if rule.action == 0 or (rule.action != 6 and rule.action not in _FILTER_ACTIONS):
            continue
        for line in rule.patterns.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if rule.action == 6:
                if not dropping:
                    log.warning("%s: header_filter_rules accept pattern %r and every "
                                "pattern after it dropped: the store cannot end the header "
                                "rules without skipping moderation", address, line)
                dropping = True
                continue
            if dropping:
                log.warning("%s: header_filter_rules pattern %r dropped (after an accept "
                            "pattern)", address, line)
                continue
            match = header_match_of(line)
            if match is None:
                log.warning("%s: header_filter_rules pattern %r dropped: Mailman 3's header "
                            "matches cannot say it (only ^Header: patterns translate)",
                            address, line)
                continue
            out.append({"header": match[0], "pattern": match[1],
                        "action": _FILTER_ACTIONS[rule.action]})
    return out


def _dollar_at_local_end(alias: str) -> str | None:
    """An acceptable_aliases line matched against a whole address the way Mailman 2
    matches it against the local part: ``$`` becomes "before the @"; None if the line
    uses other anchors."""
    out, i, in_class = [], 0, False
    while i < len(alias):
        c = alias[i]
        if c == "\\":
            if alias[i + 1:i + 2] in ("A", "Z", "b", "B"):
                return None
            out.append(alias[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "$":
            c = "(?=@|\\Z)"
        elif c == "(" and alias[i + 1:i + 2] == "?" and alias[i + 2:i + 3] != ":":
            return None
        out.append(c)
        i += 1
    return "".join(out)


def export_aliases(data: ListData, address: str, log: Any) -> tuple[list[str], bool]:
    """(acceptable_aliases, require_explicit_destination) for the store.

    Mailman 2's ``HasExplicitDest`` also takes the list's name as the local part at any
    domain, and matches each alias line (``re.match``, ignoring case) against the
    address and, without an ``@``, the local part; the store's Mailman 3 rule takes
    ``^`` patterns against the address.  A line Python 3 cannot compile (Python 2 may
    have) or cannot move turns the check off, with a warning: never a hold Mailman 2
    would not make."""
    if not data.require_explicit_destination:
        return [], False
    out = [f"^{re.escape(data.name.lower())}@"]
    for alias in data.acceptable_aliases.splitlines():
        alias = alias.strip()
        if not alias:
            continue
        local = alias if "@" in alias else _dollar_at_local_end(alias)
        if not _compiles(alias) or local is None or not _compiles(local):
            log.warning("%s: acceptable_aliases line %r cannot be imported: "
                        "require_explicit_destination turned off in the store", address,
                        alias)
            return [], False
        out.append(f"^(?:{alias})")
        if "@" not in alias:
            out.append(f"^(?:{local})")
    return list(dict.fromkeys(out)), True


_DMARC = {0: "no_mitigation", 1: "munge_from", 2: "wrap_message", 3: "reject", 4: "discard"}


def export_pipeline_settings(data: ListData, address: str, log: Any) -> dict[str, Any]:
    """The store's settings for what Mailman 2's pipeline checks besides moderation,
    each no stricter than Mailman 2 (what cannot be said is dropped, with a warning)."""
    item: dict[str, Any] = {"approval_passwords": list(data.approval_passwords)}
    if data.legacy_admin_password:
        log.warning("%s: the administrator password is stored in a pre-2.1 form (MD5 or "
                    "crypt) the store cannot check; Mailman 2 rewrites it as SHA-1 when it "
                    "is next used -- log in to the list's admin page, then import again",
                    address)
    item["header_matches"] = export_header_matches(data, address, log)
    item["bounce_matching_headers"] = data.bounce_matching_headers
    item["max_num_recipients"] = max(data.max_num_recipients, 0)
    if data.max_message_size > 0:
        log.warning("%s: max_message_size %d KB not imported: Mailman 2 counts the body "
                    "only, the store (Mailman 3) the whole message", address,
                    data.max_message_size)
    item["max_message_size"] = 0
    if data.administrivia:
        log.warning("%s: administrivia not imported: Mailman 3's test holds posts Mailman "
                    "2's does not (the first 10 lines of any length of message)", address)
    item["administrivia"] = False
    item["acceptable_aliases"], item["require_explicit_destination"] = export_aliases(
        data, address, log)
    item["newsgroup_moderation"] = (
        "none" if not data.gateway_to_news else
        {1: "open_moderated", 2: "moderated"}.get(data.news_moderation, "none"))
    action = _DMARC.get(data.dmarc_moderation_action, "no_mitigation")
    if action in ("reject", "discard") and not data.dmarc_quarantine_moderation_action:
        log.warning("%s: dmarc_moderation_action not imported: the list leaves p=quarantine "
                    "domains alone, which the store cannot", address)
        action = "no_mitigation"
    item["dmarc_mitigate_action"] = action
    entries = []
    for entry in data.dmarc_moderation_addresses:
        if entry.startswith("@"):
            continue  # GetPattern without at_list: never matches
        if entry.startswith("^") and not _compiles(entry):
            log.warning("%s: dmarc_moderation_addresses entry %r dropped: not a valid "
                        "regular expression", address, entry)
            continue
        if not entry.startswith("^") and "@" not in entry.strip():
            continue
        entries.append(mailman3_entry(entry))
    item["dmarc_addresses"] = entries
    item["dmarc_moderation_notice"] = data.dmarc_moderation_notice
    if data.pipeline is not None:
        log.warning("%s: the list has a pipeline of its own (%s); the store follows "
                    "Mailman's standard chain", address, ", ".join(data.pipeline))
    return item


def export(lists_dir: str, cfg: Config | None = None) -> dict[str, Any]:
    """Mailman 2's lists and policies in listgate's export format (``lists import``).

    What the Mailman 3 model of the store cannot say is dropped with a warning on
    the log, so that the store never refuses a post Mailman 2 would accept:
    ``@name`` references outside accept_these_nonmembers, patterns Python 3 cannot
    compile, and the pipeline settings :func:`export_pipeline_settings` cannot
    express.  Mailman 2 judges nonmembers by From (else Sender) alone, while the
    store checks every sender as Mailman 3 does: an imported list is a little more
    permissive for a post whose Reply-To or envelope is on an accept list.
    """
    import logging

    log = logging.getLogger("listgate")
    try:
        names = sorted(e.name for e in os.scandir(lists_dir) if e.is_dir())
    except OSError as e:
        raise _error(lists_dir, f"cannot list: {_cause(e)}") from None
    hosts: dict[str, str] = {}
    lists: list[ListData] = []
    for name in names:
        path = os.path.join(lists_dir, name, "config.pck")
        if not os.path.isfile(path):
            continue
        try:
            data = ListData.from_config(name, load_config(path)[1])
        except _BadData as e:
            raise _error(path, str(e)) from None
        if not data.host_name:
            raise _error(path, "the list has no host_name: cannot tell its posting address")
        hosts[name.lower()] = data.host_name
        lists.append(data)
    out = []
    for data in lists:
        address = f"{data.name.lower()}@{data.host_name}"
        item: dict[str, Any] = {
            "address": address,
            "default_member_action": "defer",
            "default_nonmember_action": _NONMEMBER_ACTIONS.get(data.generic_nonmember_action,
                                                               "hold"),
            "emergency": data.emergency,
        }
        for key in model.NONMEMBER_LISTS:
            entries = []
            for entry in getattr(data, key):
                if entry.startswith("@"):
                    ref = entry[1:].strip().lower()
                    if key != "accept_these_nonmembers" or ref not in hosts:
                        log.warning("%s: %s entry %r dropped: the store only knows @list "
                                    "references to existing lists in "
                                    "accept_these_nonmembers", address, key, entry)
                        continue
                    entries.append(f"@{ref}@{hosts[ref]}")
                elif entry.startswith("^") and not _compiles(entry):
                    log.warning("%s: %s entry %r dropped: not a valid Python 3 regular "
                                "expression (Mailman skips a bad one too; if Python 2 took "
                                "it, correct it in Mailman 2 and import again)", address,
                                key, entry)
                else:
                    entries.append(mailman3_entry(entry))
            item[key] = entries
        action = _MEMBER_ACTIONS.get(data.member_moderation_action, "hold")
        item["members"] = [
            {"address": a, "moderation_action": action if a in data.moderated else None}
            for a in sorted(data.members | data.digest_members)]
        item["nonmembers"] = []
        item.update(export_pipeline_settings(data, address, log))
        out.append(item)
    if out:
        log.warning("the store's Mailman 3 chain also refuses what Mailman 2 lets through: "
                    "malformed messages (Mailman's LMTP), posts without a valid sender, "
                    "with the list's address in List-Post, or without a Subject")
    # no "bans": Mailman 2 bans only stop subscriptions, and the store's own stay as they are
    return {"version": 1, "lists": out}
