"""The configuration: one INI file, every option's default and validation in one place.

``SCHEMA`` below is the single source of defaults.  ``etc/listgate.cfg`` documents
each key (a unit test checks that the two agree), and :func:`load` validates a file
at start-up so that a typo is an exit with ``file, [section] key: what is wrong``
before the daemon binds its socket -- never a surprise on the first message.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
SPF_ACTIONS = ("accept", "reject", "tempfail")
HOLD_ACTIONS = ("accept", "reject", "tempfail")

DEFAULT_REJECT_MESSAGE = (
    "You are not permitted to post to %(list)s. Contact %(owner)s for help."
)


class ConfigError(Exception):
    """A config problem; the message names file, section and key."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- value parsers: each takes the raw string and returns the value or raises ValueError


def _str(raw: str) -> str:
    return raw.strip()


def parse_bool(raw: str) -> bool:
    """yes/true/on/1 or no/false/off/0, as the config file and the CLI accept them."""
    v = raw.strip().lower()
    if v in ("yes", "true", "on", "1"):
        return True
    if v in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes or no, got {raw.strip()!r}")


def _seconds(raw: str) -> float:
    try:
        v = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw.strip()!r}") from None
    if v < 0:
        raise ValueError("must not be negative")
    return v


def _positive_seconds(raw: str) -> float:
    v = _seconds(raw)
    if v <= 0:
        raise ValueError("must be greater than 0")
    return v


def _int(raw: str) -> int:
    try:
        v = int(raw.strip(), 0)
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw.strip()!r}") from None
    if v < 0:
        raise ValueError("must not be negative")
    return v


def _positive_int(raw: str) -> int:
    v = _int(raw)
    if v < 1:
        raise ValueError("must be at least 1")
    return v


def _rate(raw: str) -> float:
    """Per second; 0 = unbounded."""
    try:
        v = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number per second, got {raw.strip()!r}") from None
    if not v >= 0 or v == float("inf"):
        raise ValueError("must be a finite number, not negative")
    return v


def _approve_wait(raw: str) -> float:
    """Seconds a password check may wait; far below the MTA's end-of-message timeout."""
    v = _seconds(raw)
    if v > 60:
        raise ValueError("at most 60 seconds: the check runs at end of message, which "
                         "Postfix allows a milter 300 s for (milter_content_timeout)")
    return v


def _words(raw: str) -> list[str]:
    """A list separated by commas and/or white space."""
    return [w for w in re.split(r"[\s,]+", raw.strip()) if w]


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        v = raw.strip().lower()
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw.strip()!r}")
        return v

    return parse


def _networks(raw: str) -> tuple[Network, ...]:
    nets = []
    for word in _words(raw):
        try:
            nets.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise ValueError(f"{word!r} is not an IP address or CIDR network") from None
    return tuple(nets)


def _domains(raw: str) -> tuple[str, ...]:
    out = []
    for word in _words(raw):
        d = word.lower().rstrip(".")
        if not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", d):
            raise ValueError(f"{word!r} is not a domain name")
        out.append(d)
    return tuple(out)


def _socket(raw: str) -> str:
    v = raw.strip()
    if re.fullmatch(r"unix:/\S+|local:/\S+", v):
        return v
    m = re.fullmatch(r"(inet6?):(\d+)@(\S+)", v)
    if m and 0 < int(m.group(2)) < 65536:
        return v
    raise ValueError(f"expected unix:/path, inet:PORT@HOST or inet6:PORT@[HOST], got {v!r}")


def _umask(raw: str) -> int:
    try:
        v = int(raw.strip(), 8)
    except ValueError:
        raise ValueError(f"expected an octal umask such as 007, got {raw.strip()!r}") from None
    if not 0 <= v <= 0o777:
        raise ValueError("must be between 000 and 777")
    return v


def _nameservers(raw: str) -> tuple[tuple[str, int], ...]:
    out = []
    for word in _words(raw):
        m = re.fullmatch(
            r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([0-9.]+)(?::(\d+))?|([0-9A-Fa-f:]+)", word)
        if not m:
            raise ValueError(f"{word!r} is not HOST, HOST:PORT or [IPv6]:PORT")
        host = m.group(1) or m.group(3) or m.group(5)
        port = int(m.group(2) or m.group(4) or 53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        out.append((host, port))
    return tuple(out)


def _listen(raw: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``[IPv6]:PORT`` to serve metrics on; empty = off (None)."""
    v = raw.strip()
    if not v:
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([A-Za-z0-9_.-]+):(\d+)", v)
    if not m:
        raise ValueError(f"expected HOST:PORT or [IPv6]:PORT, got {v!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} out of range")
    return host, int(port)


def _optional_seconds(raw: str) -> float | None:
    """Seconds, or empty for "inherit" (None)."""
    return _seconds(raw) if raw.strip() else None


def _url(raw: str) -> str:
    v = raw.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
        raise ValueError(f"expected an http:// or https:// URL, got {raw.strip()!r}")
    return v


def _lists_or_domains(raw: str) -> tuple[str, ...]:
    """List posting addresses and/or domains (``board@example.org, mlin.example.org``)."""
    out = []
    for word in _words(raw):
        w = word.lower().rstrip(".")
        if "@" in w:
            local, _, domain = w.partition("@")
            if not local or not _domains(domain):
                raise ValueError(f"{word!r} is not a list address")
        else:
            _domains(w)
        out.append(w)
    return tuple(out)


def _reject_message(raw: str) -> str:
    v = raw.strip()
    try:
        v % {"list": "l@d", "owner": "l-owner@d", "sender": "s@d"}
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(
            f"bad template ({e}); use %(list)s, %(owner)s, %(sender)s and %% for a percent sign"
        ) from None
    return v


@dataclass(frozen=True)
class Opt:
    """One option: its default (as the INI text) and its parser."""

    default: str
    parse: Callable[[str], Any]


SCHEMA: dict[str, dict[str, Opt]] = {
    "milter": {
        "socket": Opt("unix:/run/listgate/listgate.sock", _socket),
        "umask": Opt("007", _umask),
        "timeout": Opt("600", _positive_seconds),
        "mode": Opt("enforce", _choice("enforce", "observe")),
        "log_file": Opt("-", _str),
        "log_level": Opt("info", _choice("debug", "info", "warning", "error")),
        "authserv_id": Opt("", _str),
        "tcp_nodelay": Opt("yes", parse_bool),
        "received_spf": Opt("yes", parse_bool),
        "authentication_results": Opt("yes", parse_bool),
        "max_body_bytes": Opt("1048576", _int),
        # -- daemon operation (listgate.daemon)
        "user": Opt("", _str),
        "group": Opt("", _str),
        "shutdown_timeout": Opt("30", _seconds),
        "reload_timeout": Opt("600", _seconds),
    },
    "network": {
        "internal_connect": Opt("127.0.0.0/8, ::1/128", _networks),
        "trusted_relay": Opt("", _networks),
        "internal_domains": Opt("", _domains),
        "reject_foreign_internal": Opt("no", parse_bool),
        "hello_blacklist": Opt("", _domains),
        "organisation": Opt("", _str),
    },
    "trust": {
        "submission_servers": Opt("", _networks),
        "relay_servers": Opt("", _networks),
        "trusted_path_action": Opt("accept", _choice(*HOLD_ACTIONS)),
    },
    "dns": {
        "nameservers": Opt("", _nameservers),
        "timeout": Opt("5", _positive_seconds),
    },
    "spf": {
        "pass": Opt("accept", _choice(*SPF_ACTIONS)),
        "fail": Opt("reject", _choice(*SPF_ACTIONS)),
        "softfail": Opt("accept", _choice(*SPF_ACTIONS)),
        "neutral": Opt("accept", _choice(*SPF_ACTIONS)),
        "none": Opt("accept", _choice(*SPF_ACTIONS)),
        "permerror": Opt("reject", _choice(*SPF_ACTIONS)),
        "temperror": Opt("tempfail", _choice(*SPF_ACTIONS)),
        "helo_fail": Opt("reject", _choice("reject", "accept")),
        "timeout": Opt("20", _positive_seconds),
        "cache_ttl": Opt("60", _seconds),
    },
    "lists": {
        "backend": Opt("sqlite", _choice("sqlite", "postgresql", "mailman3", "mailman2")),
        "one_list_per_transaction": Opt("yes", parse_bool),
        "nonmember_hold_action": Opt("reject", _choice(*HOLD_ACTIONS)),
        "member_hold_action": Opt("accept", _choice(*HOLD_ACTIONS)),
        "reject_message": Opt(DEFAULT_REJECT_MESSAGE, _reject_message),
        "on_backend_error": Opt("tempfail", _choice("tempfail", "accept")),
        "cache_ttl": Opt("60", _seconds),
        "negative_cache_ttl": Opt("60", _seconds),
        "refusal_max_age": Opt("5", _seconds),
        "cache_size": Opt("10000", _int),
        "internal_only": Opt("", _lists_or_domains),
        "require_authenticated_sender": Opt("no", _choice("no", "yes", "observe")),
    },
    "mailman3": {
        "url": Opt("http://127.0.0.1:8001/3.1", _url),
        "user": Opt("restadmin", _str),
        "password": Opt("", _str),
        "password_file": Opt("", _str),
        "ca_file": Opt("", _str),
        "timeout": Opt("5", _positive_seconds),
        "cache_ttl": Opt("", _optional_seconds),
        "negative_cache_ttl": Opt("", _optional_seconds),
    },
    "mailman2": {
        "lists_dir": Opt("/var/lib/mailman/lists", _str),
        "domains": Opt("", _domains),
    },
    "sqlite": {
        "path": Opt("/var/lib/listgate/listgate.db", _str),
        "busy_timeout": Opt("2", _seconds),
    },
    "postgresql": {
        # listgate's own store on a PostgreSQL server (listgate.backends.postgresql)
        "conninfo": Opt("", _str),
        "passfile": Opt("", _str),
        "pool_size": Opt("4", _positive_int),
        "connect_timeout": Opt("5", _positive_seconds),
        "statement_timeout": Opt("2", _positive_seconds),
    },
    "approved": {
        # the moderator-password check of Mailman's approved rule (listgate.passwords)
        "max_concurrent": Opt("1", _positive_int),
        "max_per_second": Opt("1", _rate),
        "burst": Opt("4", _positive_int),
        "wait": Opt("2", _approve_wait),
        "cache_ttl": Opt("3600", _seconds),
        "cache_size": Opt("1000", _int),
        "max_password_bytes": Opt("128", _positive_int),
    },
    "metrics": {
        "listen": Opt("", _listen),
        "list_label": Opt("no", parse_bool),
    },
}

#: keys allowed in ``[list:NAME@DOMAIN]`` sections (they override ``[lists]``)
LIST_OVERRIDES = ("nonmember_hold_action", "member_hold_action", "reject_message",
                  "require_authenticated_sender")


class Config:
    """A validated configuration.  Sections are attributes: ``cfg.milter.socket``."""

    def __init__(self, path: str, values: dict[str, dict[str, Any]],
                 list_overrides: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self._values = values
        for section, opts in values.items():
            setattr(self, section, SimpleNamespace(**opts))
        #: per-list overrides, keyed by lowercased posting address
        self.list_overrides = list_overrides

    def for_list(self, list_address: str, key: str) -> Any:
        """A ``[lists]`` value, overridden by the list's own ``[list:...]`` section."""
        return self.list_overrides.get(list_address, {}).get(key, self._values["lists"][key])

    def section(self, name: str) -> dict[str, Any]:
        return dict(self._values[name])


def parse(text: str, path: str = "<string>", extra_sections: tuple[str, ...] = ()) -> Config:
    """Parse and validate INI ``text``; raise :class:`ConfigError` naming file, section and key."""
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None,
                                   strict=True, empty_lines_in_values=False)
    cp.optionxform = str.lower  # type: ignore[assignment,method-assign]
    try:
        cp.read_string(text, source=path)
    except configparser.Error as e:
        raise ConfigError(f"{path}: {e}".replace("\n", " ")) from None

    values: dict[str, dict[str, Any]] = {}
    for section, opts in SCHEMA.items():
        values[section] = {}
        for key, opt in opts.items():
            raw = cp.get(section, key, fallback=opt.default)
            try:
                values[section][key] = opt.parse(raw)
            except ValueError as e:
                raise ConfigError(f"{path}: [{section}] {key}: {e}") from None

    list_overrides: dict[str, dict[str, Any]] = {}
    for section in cp.sections():
        if section in SCHEMA or section in extra_sections:
            unknown = [k for k in cp.options(section) if k not in SCHEMA.get(section, {})]
            if unknown and section in SCHEMA:
                raise ConfigError(f"{path}: [{section}] {unknown[0]}: unknown option")
            continue
        if section.startswith("list:"):
            addr = section[5:].strip().lower()
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", addr):
                raise ConfigError(f"{path}: [{section}]: expected [list:NAME@DOMAIN]")
            ov: dict[str, Any] = {}
            for key in cp.options(section):
                if key not in LIST_OVERRIDES:
                    raise ConfigError(
                        f"{path}: [{section}] {key}: unknown option "
                        f"(a list section takes {', '.join(LIST_OVERRIDES)})"
                    )
                try:
                    ov[key] = SCHEMA["lists"][key].parse(cp.get(section, key))
                except ValueError as e:
                    raise ConfigError(f"{path}: [{section}] {key}: {e}") from None
            list_overrides[addr] = ov
            continue
        raise ConfigError(f"{path}: [{section}]: unknown section")

    return Config(path, values, list_overrides)


def load(path: str) -> Config:
    """Read and validate the config file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from None
    return parse(text, path)


def defaults() -> Config:
    """The configuration with every option at its default."""
    return parse("", "<defaults>")
