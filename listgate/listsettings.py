"""Every list setting the posting chain reads, declared once: type, default, checks.

The SQLite store's columns, the JSON export/import document, ``listgate lists set``
and the imports from Mailman 3 and Mailman 2 all carry the same settings, so that a
store imported from a Mailman gives that Mailman's verdicts.  Each :class:`Field` here
is one :class:`~listgate.model.ListPolicy` attribute with its SQL column, its JSON form
and its validation; :data:`SITE_FIELDS` are the site-wide ones
(:class:`~listgate.model.SiteFacts`).  Defaults are Mailman 3.3.10's
(``styles/base.py``, ``config/schema.cfg``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from listgate import model
from listgate.config import parse_bool

# -- validation of single values; every message names the value


def validate_address(value: Any, what: str = "address") -> str:
    """Return ``value`` lowercased if it looks like ``local@domain``, else raise ValueError.

    Deliberately loose (one ``@``, both sides non-empty, no white space): the store
    must be able to hold any address Mailman holds, and an address the milter
    never sees simply never matches.
    """
    if not isinstance(value, str):
        raise ValueError(f"invalid {what} {value!r}: not a string")
    if any(c.isspace() for c in value):
        raise ValueError(f"invalid {what} {value!r}: contains white space")
    local, at, domain = value.partition("@")
    if not at or "@" in domain:
        raise ValueError(f"invalid {what} {value!r}: expected exactly one '@'")
    if not local or not domain:
        raise ValueError(f"invalid {what} {value!r}: expected local@domain")
    return value.lower()


def validate_action(value: Any, what: str = "action") -> str:
    """Return the action lowercased if it is one of Mailman's, else raise ValueError."""
    if isinstance(value, str) and value.strip().lower() in model.ACTIONS:
        return value.strip().lower()
    raise ValueError(f"invalid {what} {value!r}: expected one of {', '.join(model.ACTIONS)}")


def validate_regexp(value: str, what: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid {what} {value!r}: bad regular expression: {e}") from None
    return value


def validate_nonmember_entry(value: Any, what: str = "entry") -> str:
    """Check one ``*_these_nonmembers`` entry: ``^regexp``, ``@list@domain`` or an address.

    Entries are kept as given (not lowercased), as Mailman keeps them: Mailman
    compares exact entries case-sensitively to the lowercased sender.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"invalid {what} {value!r}: expected a non-empty string")
    if value.startswith("^"):
        return validate_regexp(value, what)
    if value.startswith("@"):
        validate_address(value[1:], what)
        return value
    validate_address(value, what)
    return value


_HASH = re.compile(r"\$[56]\$(rounds=\d+\$)?[./0-9A-Za-z]{0,16}\$[./0-9A-Za-z]{43,86}"
                   r"|\{sha1\}[0-9a-f]{40}")


def validate_password_hash(value: Any, what: str = "approval password") -> str:
    """A stored approval password: a sha512_crypt/sha256_crypt hash (``$6$...``, what
    Mailman 3 stores) or ``{sha1}`` + 40 hex digits (Mailman 2's digests).  Never a
    plain password."""
    if isinstance(value, str) and _HASH.fullmatch(value):
        return value
    raise ValueError(f"invalid {what} {str(value)[:20]!r}...: expected a $6$/$5$ crypt hash "
                     "or {sha1}HEX (set one with 'listgate lists password')")


# -- the kinds of value a setting can have


@dataclass(frozen=True)
class Kind:
    """How one kind of setting is checked (``check``: JSON value -> normalised value,
    ValueError naming ``what``), read from the command line, and stored in SQL."""

    sql: str
    check: Callable[[Any, str], Any]
    cli: Callable[[str, str], Any]
    to_sql: Callable[[Any], Any]
    from_sql: Callable[[Any], Any]


def _check_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"invalid {what} {value!r}: expected true or false")


def _cli_bool(raw: str, what: str) -> bool:
    try:
        return parse_bool(raw)
    except ValueError:
        raise ValueError(f"invalid {what} {raw!r}: expected yes or no") from None


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"invalid {what} {value!r}: expected a whole number >= 0")


def _cli_int(raw: str, what: str) -> int:
    try:
        return _check_int(int(raw.strip()), what)
    except ValueError:
        raise ValueError(f"invalid {what} {raw!r}: expected a whole number >= 0") from None


def _check_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"invalid {what} {value!r}: expected a string")


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def check(value: Any, what: str) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError(f"invalid {what} {value!r}: expected one of {', '.join(choices)}")

    return check


def _array(item: Callable[[Any, str], Any]) -> Callable[[Any, str], tuple[Any, ...]]:
    def check(value: Any, what: str) -> tuple[Any, ...]:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"invalid {what} {value!r}: expected a list")
        return tuple(item(v, f"{what} entry") for v in value)

    return check


def _cli_array(check: Callable[[Any, str], Any]) -> Callable[[str, str], Any]:
    """A JSON array, or comma-separated words ('' clears)."""

    def cli(raw: str, what: str) -> Any:
        if raw.lstrip().startswith("["):
            try:
                value = json.loads(raw)
            except ValueError as e:
                raise ValueError(f"invalid {what} {raw!r}: not a JSON array: {e}") from None
            return check(value, what)
        return check([w.strip() for w in raw.split(",") if w.strip()], what)

    return cli


def _cli_json(check: Callable[[Any, str], Any]) -> Callable[[str, str], Any]:
    def cli(raw: str, what: str) -> Any:
        try:
            value = json.loads(raw) if raw.strip() else []
        except ValueError as e:
            raise ValueError(f"invalid {what} {raw!r}: not JSON: {e}") from None
        return check(value, what)

    return cli


def _check_string_item(value: Any, what: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"invalid {what} {value!r}: expected a non-empty string")


def _check_dmarc_address(value: Any, what: str) -> str:
    """Mailman 3's ``list_of_emails_or_regexp_validator``: an address or ``^regexp``."""
    if isinstance(value, str) and value.startswith("^"):
        return validate_regexp(value, what)
    validate_address(value, what)
    return value


def _check_header_match(value: Any, what: str) -> model.HeaderMatch:
    if isinstance(value, model.HeaderMatch):
        value = {"header": value.header, "pattern": value.pattern, "action": value.action}
    if not isinstance(value, dict) or set(value) - {"header", "pattern", "action"} or \
            not isinstance(value.get("header"), str) or not value["header"].strip() or \
            not isinstance(value.get("pattern"), str):
        raise ValueError(f'invalid {what} {value!r}: expected {{"header": H, "pattern": '
                         'REGEXP, "action": A or null}')
    action = value.get("action")
    return model.HeaderMatch(value["header"].strip().lower(), value["pattern"],
                             None if action is None else validate_action(action, what))


def _json_out(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_out(v) for v in value]
    if isinstance(value, model.HeaderMatch):
        return {"header": value.header, "pattern": value.pattern, "action": value.action}
    return value


def _from_json_text(check: Callable[[Any, str], Any], what: str) -> Callable[[Any], Any]:
    def load(raw: Any) -> Any:
        try:
            return check(json.loads(raw), what)
        except (TypeError, ValueError):
            raise ValueError(f"{what} is not valid JSON") from None

    return load


def _identity(value: Any) -> Any:
    return value


def _kind_array(item: Callable[[Any, str], Any], name: str,
                cli: Callable[[Callable[[Any, str], Any]], Callable[[str, str], Any]] = _cli_array
                ) -> Kind:
    check = _array(item)
    return Kind("TEXT NOT NULL DEFAULT '[]'", check, cli(check),
                lambda v: json.dumps(_json_out(v)), _from_json_text(check, name))


@dataclass(frozen=True)
class Field:
    """One setting: the ListPolicy / SiteFacts attribute ``name``, of ``kind``."""

    name: str
    kind: Kind
    doc: str

    def ddl(self, default: Any) -> str:
        if self.kind.sql.startswith("TEXT NOT NULL DEFAULT '[]'"):
            return f"{self.name} {self.kind.sql}"
        sql_default = self.kind.to_sql(default)
        literal = (f"'{sql_default}'" if isinstance(sql_default, str) else str(sql_default))
        return f"{self.name} {self.kind.sql} DEFAULT {literal}"


_ACTION = Kind("TEXT NOT NULL", lambda v, w: validate_action(v, w),
               lambda raw, w: validate_action(raw, w), _identity, _identity)
_BOOL = Kind("INTEGER NOT NULL", _check_bool, _cli_bool, int, bool)
_INT = Kind("INTEGER NOT NULL", _check_int, _cli_int, _identity, int)
_TEXT = Kind("TEXT NOT NULL", _check_text, lambda raw, w: raw, _identity, _identity)


def _choice_kind(*choices: str) -> Kind:
    check = _choice(*choices)
    return Kind("TEXT NOT NULL", check, lambda raw, w: check(raw.strip(), w), _identity, _identity)


#: the list settings after the posting address, in column order
LIST_FIELDS: tuple[Field, ...] = (
    Field("default_member_action", _ACTION, "action for members without one of their own"),
    Field("default_nonmember_action", _ACTION, "action for nonmembers no entry matched"),
    Field("emergency", _BOOL, "hold every post (yes/no)"),
    *(Field(k, _kind_array(validate_nonmember_entry, k),
            "entries: address, ^regexp or (accept list) @list@domain")
      for k in model.NONMEMBER_LISTS),
    Field("approval_passwords", _kind_array(validate_password_hash, "approval_passwords"),
          "hashes an Approved: password is checked against (set with 'lists password')"),
    Field("header_matches", _kind_array(_check_header_match, "header_matches", _cli_json),
          'JSON array of {"header": H, "pattern": REGEXP, "action": A or null}'),
    Field("max_message_size", _INT, "KB; 0 = no limit"),
    Field("max_num_recipients", _INT, "To + Cc addresses that hold a post; 0 = no limit"),
    Field("require_explicit_destination", _BOOL, "hold posts not addressed to the list"),
    Field("acceptable_aliases", _kind_array(_check_string_item, "acceptable_aliases"),
          "other addresses (or ^regexps) that count as explicit destinations"),
    Field("administrivia", _BOOL, "hold posts that look like email commands"),
    Field("bounce_matching_headers", _TEXT, "Mailman 2.1 lines 'Header: regexp'"),
    Field("newsgroup_moderation", _choice_kind(*model.NEWSGROUP_MODERATIONS),
          "moderated: hold every post"),
    Field("dmarc_mitigate_action", _choice_kind(*model.DMARC_ACTIONS),
          "reject/discard posts From a DMARC reject/quarantine domain"),
    Field("dmarc_addresses", _kind_array(_check_dmarc_address, "dmarc_addresses"),
          "addresses or ^regexps always treated as DMARC reject/quarantine"),
    Field("dmarc_moderation_notice", _TEXT, "text of a DMARC rejection"),
    Field("autorespond_postings", _choice_kind(*model.AUTORESPONSES),
          "respond_and_discard: discard every post"),
    Field("filter_content", _BOOL, "Mailman's content filter is on (max-size then "
          "depends on the filtered size)"),
)

LIST_FIELD_NAMES = tuple(f.name for f in LIST_FIELDS)
_BY_NAME = {f.name: f for f in LIST_FIELDS}

#: the site-wide settings (Mailman 3's [mailman] and [antispam])
SITE_FIELDS: tuple[Field, ...] = (
    Field("header_checks", _TEXT, "[antispam] header_checks: lines 'Header: regexp'"),
    Field("jump_chain", _TEXT, "[antispam] jump_chain (hold, reject, discard or accept; "
          "anything else makes Mailman fail on every post)"),
    Field("sender_headers", _TEXT, "[mailman] sender_headers"),
    Field("email_commands_max_lines", _INT, "[mailman] email_commands_max_lines"),
    Field("check_max_size_on_filtered_message", _BOOL,
          "[mailman] check_max_size_on_filtered_message"),
    Field("hold_digest", _BOOL, "[mailman] hold_digest"),
)
_SITE_BY_NAME = {f.name: f for f in SITE_FIELDS}

_POLICY_DEFAULTS = {f.name: f.default for f in fields(model.ListPolicy)}
_SITE_DEFAULTS = {f.name: f.default for f in fields(model.SiteFacts)}


def default(name: str) -> Any:
    """A list setting's default (Mailman 3's)."""
    return _POLICY_DEFAULTS[name]


def _field(table: dict[str, Field], name: str, what: str) -> Field:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"invalid {what} {name!r}: expected one of "
                         f"{', '.join(table)}") from None


def list_field(name: str) -> Field:
    """The list setting ``name``; ValueError naming the choices if there is none."""
    return _field(_BY_NAME, name, "option")


def site_field(name: str) -> Field:
    """The site-wide setting ``name``; ValueError naming the choices if there is none."""
    return _field(_SITE_BY_NAME, name, "site setting")


def list_ddl() -> str:
    """The column definitions of the ``lists`` table after ``address``."""
    return ",\n    ".join(f.ddl(default(f.name)) for f in LIST_FIELDS)


def check_list(doc: dict[str, Any], what: str) -> dict[str, Any]:
    """A list's settings from a JSON document: every field checked, missing ones at
    their defaults; returns name -> normalised value (tuples for arrays)."""
    return {f.name: f.kind.check(doc[f.name], f"{what} {f.name}") if f.name in doc
            else default(f.name) for f in LIST_FIELDS}


def policy_from_row(address: str, row: Sequence[Any]) -> model.ListPolicy:
    """A ``lists`` row (address first, then LIST_FIELDS order) -> ListPolicy;
    ValueError naming the list on a bad stored value."""
    values = {}
    for f, raw in zip(LIST_FIELDS, row, strict=True):
        try:
            values[f.name] = f.kind.from_sql(raw)
        except ValueError as e:
            raise ValueError(f"list {address}: {e}") from None
    return model.ListPolicy(address=address, **values)


def policy_to_json(policy: model.ListPolicy) -> dict[str, Any]:
    """The settings as the export document writes them (arrays as lists)."""
    return {"address": policy.address,
            **{f.name: _json_out(getattr(policy, f.name)) for f in LIST_FIELDS}}


def to_sql(name: str, value: Any) -> Any:
    return _BY_NAME[name].kind.to_sql(value)


def site_from_values(values: dict[str, Any]) -> model.SiteFacts:
    """SiteFacts from stored/JSON values (missing keys at their defaults)."""
    return model.SiteFacts(**{f.name: values.get(f.name, _SITE_DEFAULTS[f.name])
                              for f in SITE_FIELDS})


def check_site(doc: Any) -> dict[str, Any]:
    """The ``site`` object of an export document, checked."""
    if not isinstance(doc, dict):
        raise ValueError("'site' must be an object")
    unknown = set(doc) - set(_SITE_BY_NAME)
    if unknown:
        raise ValueError(f"site: unknown key {sorted(unknown)[0]!r}")
    return {k: _SITE_BY_NAME[k].kind.check(v, f"site {k}") for k, v in doc.items()}


def site_to_json(site: model.SiteFacts) -> dict[str, Any]:
    return {f.name: getattr(site, f.name) for f in SITE_FIELDS}
