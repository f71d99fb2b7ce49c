"""``listgate config check``, the MTA's side: can Postfix or sendmail reach listgate?

Socket permissions and chroot paths are the most common milter support question
there is: the daemon starts fine, and every message gets the MTA's
``milter_default_action`` because the MTA looks for the socket somewhere else or may
not open it.  This module reads what the MTA will do -- Postfix through ``postconf``
and ``postconf -M`` (master.cf), sendmail through the ``.cf`` the admin names -- and
checks it against listgate's ``[milter] socket``, as the MTA's own user would meet
it.  Each finding says what to change.

Nothing here touches pymilter; it reads files, runs ``postconf`` and connects to the
socket (as the MTA user in a forked child when run as root).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from typing import Any

from listgate.config import Config

#: the Postfix settings config check reads (and shows)
POSTFIX_KEYS = ("config_directory", "queue_directory", "mail_owner", "smtpd_milters",
                "non_smtpd_milters", "milter_default_action", "milter_connect_timeout",
                "milter_command_timeout", "milter_content_timeout")


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class Endpoint:
    """A milter socket: ``kind`` "unix" with ``path``, or "inet" with host and port."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def listgate_endpoint(spec: str) -> Endpoint:
    """``[milter] socket`` (libmilter's syntax: ``unix:/p``, ``inet:PORT@HOST``)."""
    if spec.startswith(("unix:", "local:")):
        return Endpoint("unix", path=os.path.abspath(spec.split(":", 1)[1]))
    m = re.fullmatch(r"inet6?:(\d+)@\[?([^\]]*)\]?", spec)
    assert m, spec  # config.py validated it
    return Endpoint("inet", host=m.group(2), port=int(m.group(1)))


def parse_postfix_milters(value: str) -> list[str]:
    """The milter addresses of a ``smtpd_milters`` value, in order.

    Entries are separated by commas or white space; the ``{ address, name=value... }``
    form contributes its address."""
    out = []
    for m in re.finditer(r"\{([^}]*)\}|([^\s,{}]+)", value):
        if m.group(1) is not None:
            first = re.split(r"[\s,]+", m.group(1).strip(), maxsplit=1)[0]
            if first:
                out.append(first)
        else:
            out.append(m.group(2))
    return out


def postfix_endpoint(address: str, chroot: str | None, queue: str = "/var/spool/postfix"
                     ) -> Endpoint | None:
    """A Postfix milter address as the process sees it, mapped to the real file system:
    inside a chroot (``chroot`` = queue_directory) a unix path, absolute or relative,
    is relative to the queue directory; unchrooted, a relative path is too (Postfix
    daemons run in ``queue``).  None: not a milter address Postfix knows."""
    kind, _, rest = address.partition(":")
    if kind in ("unix", "local") and rest:
        if chroot:
            return Endpoint("unix", path=os.path.normpath(os.path.join(chroot,
                                                                       rest.lstrip("/"))))
        return Endpoint("unix", path=os.path.normpath(os.path.join(queue, rest)))
    if kind == "inet":
        m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:]+):(\d+)", rest)
        if m:
            host = m.group(1) or m.group(3)
            return Endpoint("inet", host=host, port=int(m.group(2) or m.group(4)))
    return None


_ANY = {"", "0.0.0.0", "::", "*"}
_LOCAL = {"127.0.0.1", "::1", "localhost"}


def same_endpoint(a: Endpoint, b: Endpoint) -> bool:
    """Does a client connecting to ``a`` reach the listener bound at ``b``?"""
    if a.kind != b.kind:
        return False
    if a.kind == "unix":
        if os.path.exists(a.path) and os.path.exists(b.path):
            return os.path.samefile(a.path, b.path)
        return os.path.realpath(a.path) == os.path.realpath(b.path)
    if a.port != b.port:
        return False
    return a.host == b.host or b.host in _ANY or (a.host in _LOCAL and b.host in _LOCAL)


def postfix_form(ep: Endpoint, chroot: str | None) -> str | None:
    """How smtpd_milters names listgate's socket ``ep``; None if a chrooted smtpd
    cannot reach it (outside the chroot)."""
    if ep.kind == "inet":
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(ep.host, ep.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"inet:{host}:{ep.port}"
    if chroot:
        root = os.path.realpath(chroot)
        path = os.path.realpath(ep.path)
        if os.path.commonpath([root, path]) != root:
            return None
        return "unix:/" + os.path.relpath(path, root)
    return f"unix:{ep.path}"


def listening(ep: Endpoint, timeout: float = 2.0) -> str | None:
    """None if something accepts connections at ``ep``, else why not."""
    try:
        if ep.kind == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(ep.path)
        else:
            host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1",
                    "*": "127.0.0.1"}.get(ep.host, ep.host)
            with socket.create_connection((host, ep.port), timeout=timeout):
                pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


# --------------------------------------------------------------------------- permissions


@dataclass(frozen=True)
class User:
    """A user as the kernel checks permissions: uid, primary gid, supplementary gids."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    @classmethod
    def named(cls, name: str) -> User | None:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            return None
        groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name, pw.pw_uid, pw.pw_gid, frozenset(groups))


def _may(user: User, st: os.stat_result, bit: int) -> bool:
    """May ``user`` use ``bit`` (4 r, 2 w, 1 x) on a file with ``st``?  (root may.)"""
    if user.uid == 0:
        return True
    if st.st_uid == user.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in user.groups:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def _owner(st: os.stat_result) -> str:
    try:
        u = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        u = str(st.st_uid)
    try:
        g = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        g = str(st.st_gid)
    return f"{u}:{g}"


def _describe(st: os.stat_result) -> str:
    return f"{stat.filemode(st.st_mode)} {_owner(st)}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def access_problem(user: User, path: str, start: str = "/",
                   predicted: os.stat_result | None = None) -> str | None:
    """Why ``user`` cannot connect to the unix socket at ``path``, or None.

    Every directory from ``start`` (``/``, or the chroot: the ancestors of a chroot are
    passed as root) down needs search (x) permission, the socket write (w)
    permission.  ``predicted``: the socket's mode and owner when it does not exist
    yet (the daemon is not running)."""
    path = os.path.realpath(path)
    parts = os.path.relpath(path, start).split(os.sep)
    d = start
    for part in parts[:-1]:
        d = os.path.join(d, part)
        try:
            st = os.stat(d)
        except OSError as e:
            return f"{d}: {e.strerror}"
        if not _may(user, st, 1):
            how = _fix_for(user, st)
            return (f"user {user.name} cannot enter {d} ({_describe(st)}): {how} "
                    f"{d}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if predicted is None:
            return None
        st = predicted
    if not _may(user, st, 2):
        group = _group_name(st.st_gid)
        return (f"user {user.name} may not connect to the socket {path} "
                f"({_describe(st)}{', predicted' if st is predicted else ''}): add "
                f"{user.name} to group {group} (adduser {user.name} {group}; then restart "
                f"the MTA) or make the socket group- or world-writable ([milter] umask)")
    return None


def _fix_for(user: User, st: os.stat_result) -> str:
    group = _group_name(st.st_gid)
    if st.st_mode & 0o010:
        return f"add {user.name} to group {group} (adduser {user.name} {group}) or chmod o+x"
    return f"chmod g+x (and add {user.name} to group {group}) or chmod o+x"


def try_connect_as(user: User, path: str, timeout: float = 2.0) -> str | None:
    """Connect to ``path`` as ``user`` for real (a forked child that drops to the user;
    root only): None if it connects, else the error.  Catches what the mode bits do
    not show (ACLs, a read-only mount, an LSM)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        msg = b""
        try:
            os.setgroups(sorted(user.groups))
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(path)
        except OSError as e:
            msg = (e.strerror or type(e).__name__).encode()
        except BaseException:  # noqa: BLE001 - the child must end with _exit
            msg = b"failed"
        os.write(w, msg or b"ok")
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read().decode("utf-8", "replace")
    os.waitpid(pid, 0)
    return None if got == "ok" else got


def predicted_socket(cfg: Config, directory: str) -> os.stat_result | None:
    """The mode and owner the daemon will give its socket: 0777 minus ``[milter]
    umask``, owned by ``[milter] user`` (or whoever runs config check) and its group
    (``[milter] group``, the directory's if it is setgid)."""
    try:
        dst = os.stat(directory)
    except OSError:
        return None
    uid, gid = os.geteuid(), os.getegid()
    if cfg.milter.user:
        try:
            pw = pwd.getpwnam(cfg.milter.user)
            uid, gid = pw.pw_uid, pw.pw_gid
        except KeyError:
            pass
    if cfg.milter.group:
        try:
            gid = grp.getgrnam(cfg.milter.group).gr_gid
        except KeyError:
            pass
    elif dst.st_mode & stat.S_ISGID:
        gid = dst.st_gid
    mode = stat.S_IFSOCK | (0o777 & ~cfg.milter.umask)
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


# --------------------------------------------------------------------------- Postfix


def postconf_tool() -> str | None:
    return shutil.which("postconf") or next(
        (p for p in ("/usr/sbin/postconf", "/usr/local/sbin/postconf") if os.access(p, os.X_OK)),
        None)


def _postconf(tool: str, config_dir: str | None, *args: str) -> str:
    cmd = [tool, *(["-c", config_dir] if config_dir else []), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {(p.stderr or p.stdout).strip()}")
    return p.stdout


@dataclass
class Service:
    """One master.cf entry: ``name/type`` and whether it runs chrooted."""

    name: str
    type: str
    chroot: bool
    command: str
    #: ``-o name=value`` overrides of main.cf settings
    overrides: dict[str, str] = field(default_factory=dict)


def read_master(text: str) -> list[Service]:
    """``postconf -M`` output: service type private unpriv chroot wakeup maxproc
    command [args], one entry per line.  A ``-`` chroot is Postfix 3's default, n."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 8 or words[0].startswith("#"):
            continue
        overrides = {}
        args = words[8:]
        for i, a in enumerate(args):
            if a == "-o" and i + 1 < len(args) and "=" in args[i + 1]:
                k, _, v = args[i + 1].partition("=")
                overrides[k] = v
            elif a.startswith("-o") and "=" in a[2:]:
                k, _, v = a[2:].partition("=")
                overrides[k] = v
        out.append(Service(words[0], words[1], words[4] == "y", words[7], overrides))
    return out


def postfix_settings(config_dir: str | None) -> dict[str, Any]:
    """What Postfix's ``postconf`` says (main.cf and master.cf), or why it cannot."""
    tool = postconf_tool()
    if tool is None:
        return {"present": False, "why": "postconf not found"}
    try:
        main = _postconf(tool, config_dir, *POSTFIX_KEYS)
        master = _postconf(tool, config_dir, "-M")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return {"present": False, "why": str(e)}
    values = {}
    for line in main.splitlines():
        k, sep, v = line.partition(" = ")
        if sep:
            values[k.strip()] = v.strip()
        elif line.endswith(" ="):
            values[line[:-2].strip()] = ""
    return {"present": True, "config_dir": values.get("config_directory", config_dir or ""),
            "settings": values, "services": read_master(master)}


def postfix_seconds(value: str) -> float | None:
    """A Postfix time value (``30s``, ``5m``, ``300``: seconds by default)."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", value or "")
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400,
                              "w": 604800}[m.group(2)]


def check_postfix(cfg: Config, pf: dict[str, Any], ep: Endpoint,
                  budgets: dict[str, float]) -> tuple[dict[str, Any], list[str]]:
    """Findings about the Postfix ``pf`` (:func:`postfix_settings`) reaching ``ep``."""
    s = pf["settings"]
    queue = s.get("queue_directory", "/var/spool/postfix")
    owner = s.get("mail_owner", "postfix")
    services = pf["services"]
    warnings: list[str] = []
    out: dict[str, Any] = {"config_dir": pf["config_dir"],
                           "settings": {k: s.get(k, "") for k in POSTFIX_KEYS},
                           "services": []}
    user = User.named(owner)
    if user is None:
        warnings.append(f"Postfix mail_owner = {owner}: no such user")
    smtpds = [sv for sv in services if sv.command == "smtpd"]
    cleanups = [sv for sv in services if sv.command == "cleanup"]
    checked: set[str] = set()
    for key, group, what in (("smtpd_milters", smtpds, "smtpd"),
                             ("non_smtpd_milters", cleanups, "cleanup")):
        for sv in group:
            value = sv.overrides.get(key, s.get(key, ""))
            where = f"master.cf {sv.name}/{sv.type}" + (
                f" (-o {key})" if key in sv.overrides else "")
            chroot = queue if sv.chroot else None
            entry = {"service": f"{sv.name}/{sv.type}", "key": key, "value": value,
                     "chroot": chroot, "reaches_listgate": False}
            out["services"].append(entry)
            found = []
            for address in parse_postfix_milters(value):
                pe = postfix_endpoint(address, chroot, queue)
                if pe is None:
                    continue
                if same_endpoint(pe, ep):
                    found.append((address, pe))
                    continue
                outside = postfix_endpoint(address, None, queue)
                if chroot and outside is not None and same_endpoint(outside, ep):
                    # the classic: the path is right, but not from inside the chroot
                    fix = postfix_form(ep, chroot)
                    how = (f"set {key} = {fix}" if fix else
                           f"put listgate's socket inside the chroot ([milter] socket = "
                           f"unix:{os.path.join(queue, 'listgate', 'listgate.sock')}, "
                           f"{key} = unix:/listgate/listgate.sock) or run {what} unchrooted "
                           f"(chroot column n in master.cf)")
                    warnings.append(
                        f"Postfix {what} ({where}) runs chrooted in {queue}: {key} = "
                        f"{address} means {pe.path} to it, not listgate's socket {ep.path}; "
                        f"{how}")
                    found.append(("", pe))  # reported: no "does not name" as well
            entry["reaches_listgate"] = any(a for a, _ in found)
            if not found and key == "smtpd_milters":
                fix = postfix_form(ep, chroot)
                if fix is None:
                    warnings.append(
                        f"Postfix smtpd ({where}) runs chrooted in {queue}, and listgate's "
                        f"socket {ep.path} is outside it: {key} = {value or '(empty)'} cannot "
                        f"reach it; put the socket inside the chroot ([milter] socket = "
                        f"unix:{os.path.join(queue, 'listgate', 'listgate.sock')}, {key} = "
                        f"unix:/listgate/listgate.sock) or run smtpd unchrooted (chroot "
                        f"column n in master.cf)")
                else:
                    warnings.append(
                        f"Postfix {key} = {value or '(empty)'} ({where}) does not name "
                        f"listgate's socket {ep}: set {key} = {fix}"
                        + (f" (smtpd is chrooted in {queue}: the path is relative to it)"
                           if chroot else ""))
            elif key == "non_smtpd_milters" and any(a for a, _ in found):
                # cleanup(8) simulates SMTP for local submissions: a refusal of its
                # simulated RCPT leaves the mail in the queue (and they are INTERNAL)
                warnings.append(
                    f"Postfix non_smtpd_milters = {value} ({where}) names listgate: a "
                    f"refusal of a local submission's simulated RCPT leaves the mail in "
                    f"the queue, and local submissions are INTERNAL anyway; remove "
                    f"listgate from non_smtpd_milters")
                continue  # its socket permissions are smtpd's concern
            for address, pe in found:
                if address and ep.kind == "unix" and user is not None and key not in checked:
                    checked.add(key)
                    problem = access_problem(user, pe.path, chroot or "/",
                                             predicted_socket(cfg, os.path.dirname(pe.path)))
                    if problem is None and os.geteuid() == 0 and os.path.exists(pe.path):
                        why = try_connect_as(user, pe.path)
                        if why is not None:
                            problem = (f"user {user.name} cannot connect to {pe.path}: "
                                       f"{why}")
                    if problem:
                        warnings.append(f"Postfix {what} runs as {owner}: {problem}")
                    entry["user_may_connect"] = problem is None
    action = s.get("milter_default_action", "tempfail")
    if action == "accept":
        warnings.append("Postfix milter_default_action = accept: while listgate is down or "
                        "unreachable every post is delivered unchecked; set "
                        "milter_default_action = tempfail (Postfix's default) to defer "
                        "them instead")
    warnings += compare_budgets(budgets, {
        "mail": ("Postfix milter_command_timeout", s.get("milter_command_timeout", "")),
        "rcpt": ("Postfix milter_command_timeout", s.get("milter_command_timeout", "")),
        "eom": ("Postfix milter_content_timeout", s.get("milter_content_timeout", "")),
    })
    return out, warnings


# --------------------------------------------------------------------------- budgets

#: which config keys make up each stage's budget, for the warning's advice
BUDGET_KEYS = {"mail": "[spf] timeout", "rcpt": "[mailman3] timeout",
               "eom": "[spf] timeout, [dns] timeout, [mailman3] timeout, [approved] wait"}
STAGE_NAMES = {"mail": "MAIL FROM", "rcpt": "RCPT TO", "eom": "end of message"}


def compare_budgets(budgets: dict[str, float],
                    timeouts: dict[str, tuple[str, str]]) -> list[str]:
    """A warning for each stage whose worst case is not below the MTA's timeout: the
    MTA would give up first and apply its default action, with no reason in
    listgate's log."""
    out = []
    for stage_, (name, raw) in timeouts.items():
        limit = postfix_seconds(raw)  # sendmail's T= values use the same units
        if limit is None or stage_ not in budgets:
            continue
        if budgets[stage_] >= limit:
            out.append(f"{STAGE_NAMES[stage_]}: listgate may wait up to {budgets[stage_]:g} s "
                       f"({BUDGET_KEYS[stage_]}), not below {name} = {raw} ({limit:g} s): "
                       f"the MTA gives up first; lower {BUDGET_KEYS[stage_]} or raise {name}")
    return out


# --------------------------------------------------------------------------- sendmail


def read_sendmail_cf(path: str) -> dict[str, Any]:
    """The milters of a sendmail ``.cf`` (``X`` lines, from the .mc's INPUT_MAIL_FILTER)
    and ``O InputMailFilters``; an ``.mc`` is read for its INPUT_MAIL_FILTER lines."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    filters: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"^X([^,\s]+)\s*,\s*(.*)$", text, re.M):
        filters[m.group(1)] = _equates(m.group(2))
    for m in re.finditer(r"INPUT_MAIL_FILTER\(\s*`([^']+)'\s*,\s*`([^']*)'\s*\)", text):
        filters[m.group(1)] = _equates(m.group(2))
    active = None
    m = re.search(r"^O\s*InputMailFilters\s*=\s*(.*)$", text, re.M)
    if m:
        active = [w for w in re.split(r"[\s,]+", m.group(1).strip()) if w]
    elif "INPUT_MAIL_FILTER" in text:
        active = list(filters)  # the .mc: INPUT_MAIL_FILTER adds to InputMailFilters
    return {"path": path, "filters": filters, "active": active or []}


def _equates(text: str) -> dict[str, str]:
    out = {}
    for part in re.split(r",\s*(?=[A-Z]=)", text.strip()):
        k, sep, v = part.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def sendmail_endpoint(spec: str) -> Endpoint | None:
    kind, _, rest = spec.partition(":")
    if kind in ("unix", "local"):
        return Endpoint("unix", path=rest)
    if kind in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        if port.isdigit():
            return Endpoint("inet", host=host.strip("[]"), port=int(port))
    return None


#: sendmail's milter timeouts when T= leaves them out (op.me, "X -- Mail Filter")
SENDMAIL_DEFAULT_T = {"C": "5m", "S": "10s", "R": "10s", "E": "5m"}


def check_sendmail(sm: dict[str, Any], ep: Endpoint,
                   budgets: dict[str, float]) -> tuple[dict[str, Any], list[str]]:
    path = sm["path"]
    warnings: list[str] = []
    ours = [(n, eq) for n, eq in sm["filters"].items()
            if (e := sendmail_endpoint(eq.get("S", ""))) is not None and same_endpoint(e, ep)]
    out: dict[str, Any] = {"path": path, "filters": sm["filters"], "active": sm["active"]}
    sm_spec = (f"local:{ep.path}" if ep.kind == "unix" else f"inet:{ep.port}@"
               f"{ep.host or '127.0.0.1'}")
    if not ours:
        named = ", ".join(f"{n} (S={eq.get('S', '')})" for n, eq in sm["filters"].items())
        warnings.append(
            f"sendmail {path}: no mail filter names listgate's socket {ep} "
            f"({named or 'no INPUT_MAIL_FILTER at all'}): add INPUT_MAIL_FILTER(`listgate', "
            f"`S={sm_spec}, F=T, T=C:10s;S:30s;R:60s;E:5m') to the .mc and rebuild the .cf")
        return out, warnings
    name, eq = ours[0]
    out["listgate_filter"] = name
    if name not in sm["active"]:
        warnings.append(f"sendmail {path}: filter {name} (S={eq.get('S')}) is defined but "
                        f"not in InputMailFilters ({', '.join(sm['active']) or 'empty'}): "
                        f"sendmail never calls it; use INPUT_MAIL_FILTER, not MAIL_FILTER")
    flags = eq.get("F", "")
    out["on_failure"] = ("tempfail" if "T" in flags else "reject" if "R" in flags
                         else "accept")
    if out["on_failure"] == "accept":
        warnings.append(f"sendmail {path}: filter {name} has no F=T: while listgate is down "
                        f"or unreachable every post is delivered unchecked; add F=T")
    t = dict(SENDMAIL_DEFAULT_T)
    for part in eq.get("T", "").split(";"):
        k, sep, v = part.partition(":")
        if sep:
            t[k.strip()] = v.strip()
    out["timeouts"] = t
    warnings += compare_budgets(budgets, {
        "mail": (f"sendmail T=R (filter {name})", t["R"]),
        "rcpt": (f"sendmail T=R (filter {name})", t["R"]),
        "eom": (f"sendmail T=E (filter {name})", t["E"]),
    })
    return out, warnings
