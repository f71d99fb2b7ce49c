"""``listgate config check``: is this config ready for production, and what will it do?

Start-up only proves that the file parses.  Before a restart an admin also wants to
know that the backend answers, that the configured DNS resolves (SPF depends on it:
without DNS every external post is a temperror), and what listgate will answer for
each list the backend knows -- including ``[list:...]`` sections that name a list
the backend does not know, which silently do nothing.

It also looks from the MTA's side (:mod:`listgate.mtacheck`): Postfix's settings
through ``postconf`` (or sendmail's ``.cf`` named with ``--sendmail-cf``), whether
the MTA reaches the socket -- its chroot, its user's permissions, its milter list --
and its milter timeouts next to listgate's own worst case per stage
(:func:`stage_budgets`).  Those findings are warnings: the MTA may be another host.

Exit status: 0 ready (warnings allowed), 1 the backend or DNS does not answer,
2 the config is invalid (the same errors as start-up).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

from listgate import addresses, mtacheck
from listgate.chain import list_verdict, needs_body
from listgate.config import Config
from listgate.engine import Engine
from listgate.model import Backend, BackendError, ListFacts, Mailman2Facts, owner_of
from listgate.rules.mailman3 import site_header_checks

#: an address no list has: asking for it proves the backend answers
PROBE_ADDRESS = "postmaster@listgate.invalid"
#: the sender of the imagined nonmember post whose fate is shown per list
PROBE_SENDER = "nonmember@listgate.invalid"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def check_backend(backend: Backend) -> dict[str, Any]:
    """One list lookup and the list of lists: reachable or the error."""
    start = time.perf_counter()
    try:
        backend.find_list(PROBE_ADDRESS)
        lists = backend.lists()
    except BackendError as e:
        return {"name": backend.name, "ok": False, "error": str(e)}
    return {"name": backend.name, "ok": True, "ms": _ms(time.perf_counter() - start),
            "lists": lists}


def default_test_name(lists: list[str]) -> str:
    """A name worth resolving: the first list's domain (its SPF/MX are what senders
    see), else this host's name."""
    return addresses.domain_of(lists[0]) if lists else socket.getfqdn()


def check_dns(cfg: Config, name: str) -> dict[str, Any]:
    """Resolve ``name`` (TXT, as SPF does) through the configured name servers.

    NXDOMAIN or no TXT record is a fine answer: the server replied.  A timeout or no
    reachable server is the error every SPF check would then end in.
    """
    import dns.exception
    import dns.resolver

    from listgate.spfcheck import configure_dns

    configure_dns(cfg.dns.nameservers, cfg.dns.timeout)
    res = dns.resolver.get_default_resolver()
    servers = ([f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in cfg.dns.nameservers]
               or [f"{ns} (resolv.conf)" for ns in res.nameservers])
    out: dict[str, Any] = {"name": name, "type": "TXT", "nameservers": servers,
                           "timeout": cfg.dns.timeout}
    start = time.perf_counter()
    try:
        answer = res.resolve(name, "TXT", search=False)
        out.update(ok=True, answer=[b"".join(r.strings).decode("utf-8", "replace")
                                    for r in answer])
    except dns.resolver.NXDOMAIN:
        out.update(ok=True, answer="NXDOMAIN")
    except dns.resolver.NoAnswer:
        out.update(ok=True, answer="no TXT record")
    except dns.exception.DNSException as e:
        out.update(ok=False, error=f"{type(e).__name__}: {e}")
    out["ms"] = _ms(time.perf_counter() - start)
    return out


def stage_budget_parts(cfg: Config) -> dict[str, list[tuple[str, float]]]:
    """The worst case of each SMTP stage that waits on the outside world, as the
    config keys that bound its waits (how :mod:`listgate.engine` runs them under
    :func:`listgate.budget.stage`):

    * MAIL FROM: SPF's DNS for the HELO and MAIL FROM identities together, one
      ``[spf] timeout``;
    * RCPT TO: the list lookup, one backend budget (``[mailman3] timeout``, the
      engine's ``backend_budget`` for every backend);
    * end of message: the relayed post's SPF (``[spf] timeout``), then the DKIM key
      lookups (all of them within one ``[dns] timeout``), then per list the backend
      budget, within which the rules may wait for the DMARC policy lookup (its own
      ``[dns] timeout``) and for a moderator-password check (``[approved] wait``).
      With ``[lists] one_list_per_transaction = no`` the per-list part counts once
      for each list of the transaction; this counts one.
    """
    return {
        "mail": [("[spf] timeout", cfg.spf.timeout)],
        "rcpt": [("[mailman3] timeout", cfg.mailman3.timeout)],
        "eom": [("[spf] timeout", cfg.spf.timeout),
                ("[dns] timeout (DKIM keys)", cfg.dns.timeout),
                ("[mailman3] timeout", cfg.mailman3.timeout),
                ("[dns] timeout (DMARC policy)", cfg.dns.timeout),
                ("[approved] wait", cfg.approved.wait)],
    }


def stage_budgets(cfg: Config) -> dict[str, float]:
    """Seconds listgate may take at most per stage (``mail``, ``rcpt``, ``eom``): what
    must stay below the MTA's milter timeouts (Postfix ``milter_command_timeout`` for
    MAIL and RCPT, ``milter_content_timeout`` for end of message)."""
    return {stage: sum(s for _, s in parts) for stage, parts in stage_budget_parts(cfg).items()}


def check_mta(cfg: Config, postfix_config: str | None = None, postfix: bool = True,
              sendmail_cf: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The MTA's side: is listgate's socket listening, and can Postfix (and the
    sendmail of ``sendmail_cf``) reach it?  The findings, and warnings saying what
    to change."""
    ep = mtacheck.listgate_endpoint(cfg.milter.socket)
    budgets = stage_budgets(cfg)
    warnings: list[str] = []
    why = mtacheck.listening(ep)
    out: dict[str, Any] = {"socket": str(ep), "listening": why is None,
                           "budgets": budgets,
                           "budget_parts": {k: [list(p) for p in v]
                                            for k, v in stage_budget_parts(cfg).items()}}
    if why is not None:
        out["not_listening"] = why
        warnings.append(f"[milter] socket: nothing listens on {ep} ({why}): listgate is "
                        f"not running, or another config is; the MTA applies its default "
                        f"action until it does")
    if postfix:
        pf = mtacheck.postfix_settings(postfix_config)
        if pf["present"]:
            out["postfix"], w = mtacheck.check_postfix(cfg, pf, ep, budgets)
            warnings += w
        else:
            out["postfix"] = {"skipped": pf["why"]}
    if sendmail_cf:
        try:
            sm = mtacheck.read_sendmail_cf(sendmail_cf)
        except OSError as e:
            out["sendmail"] = {"path": sendmail_cf, "error": e.strerror}
            warnings.append(f"--sendmail-cf {sendmail_cf}: cannot read: {e.strerror}")
        else:
            out["sendmail"], w = mtacheck.check_sendmail(sm, ep, budgets)
            warnings += w
    return out, warnings


def suffix_list() -> dict[str, str]:
    """Which Public Suffix List (DMARC alignment) is in use, and of what date."""
    from listgate.authn import SUFFIX_LIST

    return {"path": SUFFIX_LIST.path, "origin": SUFFIX_LIST.origin,
            "date": SUFFIX_LIST.date, "date_from": SUFFIX_LIST.date_from}


def describe_list(engine: Engine, backend: Backend, address: str) -> dict[str, Any]:
    """What listgate does with posts to ``address``: the config's mapping for this
    list and the answer a nonmember's post would get."""
    cfg = engine.cfg
    out: dict[str, Any] = {
        "list": address,
        "internal_only": engine.is_internal_only(address),
        "require_authenticated_sender": engine.auth_mode(address),
        "nonmember_hold_action": cfg.for_list(address, "nonmember_hold_action"),
        "member_hold_action": cfg.for_list(address, "member_hold_action"),
        "reject_message": cfg.for_list(address, "reject_message") % {
            "list": address, "owner": owner_of(address), "sender": "SENDER"},
        "overrides": sorted(cfg.list_overrides.get(address, {})),
    }
    if out["internal_only"]:
        out["external_post"] = str(engine.internal_only_reply(address))
    try:
        facts = backend.list_facts(address, (PROBE_SENDER,), PROBE_SENDER)
    except BackendError as e:
        out["error"] = str(e)
        return out
    holds_refuse = cfg.for_list(address, "member_hold_action") != "accept"
    out["reads_body"] = (cfg.for_list(address, "require_authenticated_sender") != "no"
                         or needs_body(facts, holds_refuse))
    if isinstance(facts, ListFacts):
        p = facts.policy
        out["policy"] = {"default_member_action": p.default_member_action,
                         "default_nonmember_action": p.default_nonmember_action,
                         "emergency": p.emergency}
        out["chain"] = {"moderator_password": bool(p.approval_passwords),
                        "header_matches": len(p.header_matches),
                        "site_header_checks": len(site_header_checks(facts.site.header_checks)),
                        "max_message_size": p.max_message_size,
                        "max_num_recipients": p.max_num_recipients,
                        "require_explicit_destination": p.require_explicit_destination,
                        "dmarc_mitigate_action": p.dmarc_mitigate_action}
    elif isinstance(facts, Mailman2Facts):
        out["policy"] = {"generic_nonmember_action": facts.generic_nonmember_action,
                         "member_moderation_action": facts.member_moderation_action,
                         "emergency": facts.emergency}
    verdict = list_verdict(facts)
    # the daemon's own mapping from list verdict to SMTP answer
    decision = engine.session("config-check")._map_verdict(address, verdict, (PROBE_SENDER,))
    kind = f"({verdict.hold_kind})" if verdict.hold_kind else ""
    out["nonmember_post"] = {"list_verdict": f"{verdict.action}{kind}",
                             "reasons": list(verdict.reasons),
                             "answer": str(decision.reply) if decision.reply else "accept"}
    return out


def run_checks(cfg: Config, backend: Backend, resolve: str | None,
               mta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every check; ``ok`` is False if the backend or DNS failed.  ``mta``: the
    keyword arguments of :func:`check_mta` (None: the MTA's side is not looked at)."""
    engine = Engine(cfg, backend, None, lambda _host, _ip: False)
    result: dict[str, Any] = {"config": cfg.path, "mode": cfg.milter.mode, "warnings": []}
    result["public_suffix_list"] = suffix_list()
    b = check_backend(backend)
    result["backend"] = {k: v for k, v in b.items() if k != "lists"}
    lists: list[str] = b.get("lists", [])
    result["dns"] = check_dns(cfg, resolve or default_test_name(lists))
    result["lists"] = [describe_list(engine, backend, a) for a in lists]
    if b["ok"]:
        for address in sorted(cfg.list_overrides):
            try:
                known = backend.find_list(address)
            except BackendError:
                known = None
            if known is None:
                result["warnings"].append(
                    f"[list:{address}]: the backend has no such list; the section has no effect")
    if b["ok"] and not lists:
        result["warnings"].append(
            f"backend {backend.name} holds no lists: no recipient is a list, so no post is "
            "gated; if lists were there, the store was lost or the config names the wrong one")
    if mta is not None:
        result["mta"], w = check_mta(cfg, **mta)
        result["warnings"] += w
    result["ok"] = bool(b["ok"] and result["dns"]["ok"])
    return result


def _mta_lines(m: dict[str, Any]) -> list[str]:
    lines = [f"socket {m['socket']}: "
             + ("listening" if m["listening"] else f"nothing listening ({m['not_listening']})")]
    parts = m["budget_parts"]
    for stage, name in mtacheck.STAGE_NAMES.items():
        detail = " + ".join(f"{k} {v:g}" for k, v in parts[stage])
        lines.append(f"listgate budget, {name}: {m['budgets'][stage]:g} s ({detail})")
    pf = m.get("postfix")
    if pf is not None and "skipped" in pf:
        lines.append(f"postfix: not checked ({pf['skipped']})")
    elif pf is not None:
        s = pf["settings"]
        lines.append(f"postfix {pf['config_dir']}: milter_default_action "
                     f"{s['milter_default_action']}, milter_connect_timeout "
                     f"{s['milter_connect_timeout']}, milter_command_timeout "
                     f"{s['milter_command_timeout']}, milter_content_timeout "
                     f"{s['milter_content_timeout']}")
        for sv in pf["services"]:
            where = f"chrooted in {sv['chroot']}" if sv["chroot"] else "not chrooted"
            reach = "reaches listgate" if sv["reaches_listgate"] else "does not reach listgate"
            lines.append(f"postfix {sv['service']} ({where}): {sv['key']} = "
                         f"{sv['value'] or '(empty)'}: {reach}")
    sm = m.get("sendmail")
    if sm is not None and "error" not in sm:
        if "listgate_filter" in sm:
            t = sm["timeouts"]
            lines.append(f"sendmail {sm['path']}: filter {sm['listgate_filter']}, on failure "
                         f"{sm['on_failure']}, T=C:{t['C']};S:{t['S']};R:{t['R']};E:{t['E']}")
        else:
            lines.append(f"sendmail {sm['path']}: no filter for listgate")
    return lines


def as_text(r: dict[str, Any]) -> str:
    lines = [f"config {r['config']}: valid (mode {r['mode']})"]
    b = r["backend"]
    if b["ok"]:
        lines.append(f"backend {b['name']}: answers ({b['ms']} ms), {len(r['lists'])} list(s)")
    else:
        lines.append(f"backend {b['name']}: ERROR {b['error']}")
    d = r["dns"]
    where = ", ".join(d["nameservers"]) or "none"
    if d["ok"]:
        answer = d["answer"] if isinstance(d["answer"], str) else "; ".join(
            repr(a) for a in d["answer"]) or "empty"
        lines.append(f"dns via {where}: {d['name']} TXT -> {answer} ({d['ms']} ms)")
    else:
        lines.append(f"dns via {where}: {d['name']} TXT: ERROR {d['error']} ({d['ms']} ms)")
    psl = r["public_suffix_list"]
    lines.append(f"public suffix list: {psl['path']} ({psl['origin']}), dated {psl['date']} "
                 f"({psl['date_from']})")
    if "mta" in r:
        lines += _mta_lines(r["mta"])
    for li in r["lists"]:
        lines.append("")
        lines.append(li["list"])
        if li["internal_only"]:
            lines.append(f"  internal-only: posts from outside get {li['external_post']}")
        else:
            lines.append("  internal-only: no")
        lines.append(f"  require_authenticated_sender: {li['require_authenticated_sender']}")
        lines.append(f"  nonmember hold -> {li['nonmember_hold_action']}, "
                     f"member hold -> {li['member_hold_action']}")
        lines.append(f"  reject message: {li['reject_message']}")
        if "policy" in li:
            lines.append("  list policy: " + ", ".join(f"{k} {v}" for k, v in
                                                        li["policy"].items()))
        if "chain" in li:
            c = li["chain"]
            password = "set" if c["moderator_password"] else "none"
            lines.append(
                f"  posting chain: moderator password {password}"
                f", {c['header_matches']} header rule(s) (+{c['site_header_checks']} site), "
                f"max size {c['max_message_size']} KB, max recipients "
                f"{c['max_num_recipients']}, explicit destination "
                f"{'yes' if c['require_explicit_destination'] else 'no'}, DMARC "
                f"{c['dmarc_mitigate_action']}")
        if "reads_body" in li:
            lines.append(f"  reads the message body: {'yes' if li['reads_body'] else 'no'}")
        if "nonmember_post" in li:
            n = li["nonmember_post"]
            lines.append(f"  a nonmember's post: list says {n['list_verdict']} -> "
                         f"{n['answer']}")
        if "error" in li:
            lines.append(f"  ERROR {li['error']}")
        if li["overrides"]:
            lines.append(f"  from [list:{li['list']}]: {', '.join(li['overrides'])}")
    for w in r["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines) + "\n"


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("config", help="configuration tools (config check)")
    sub = p.add_subparsers(dest="config_command", metavar="COMMAND")
    c = sub.add_parser(
        "check", parents=[parent],
        help="validate the config, reach the backend and DNS, check the MTA's side, "
             "show what each list gets",
        description="Validate the config (exit 2 on the errors start-up would give), look "
                    "up a list in the backend and resolve a name through [dns] (exit 1 if "
                    "either fails), and print what listgate will do with each list.  Then "
                    "from the MTA's side: whether the socket listens; for Postfix (read "
                    "with postconf and postconf -M) whether smtpd_milters and "
                    "non_smtpd_milters name listgate's socket as a chrooted smtpd sees "
                    "it (smtpd_milters must, non_smtpd_milters must not), and whether "
                    "the postfix user may enter its directories and connect; for "
                    "sendmail (--sendmail-cf) its INPUT_MAIL_FILTER; the "
                    "MTA's milter_default_action and milter timeouts next to listgate's "
                    "own time budget per stage, with a warning when a budget is not "
                    "below the timeout.  Also which Public Suffix List is in use.  MTA "
                    "findings are warnings, each saying what to change.",
        epilog="exit status: 0 ready (warnings allowed); 1 the backend or DNS does not "
               "answer; 2 the config is invalid (the errors start-up would give)")
    c.add_argument("--resolve", metavar="NAME",
                   help="the name to look up (TXT); default: the first list's domain")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--postfix-config", metavar="DIR",
                   help="the Postfix configuration directory to read with postconf -c "
                        "(default: postconf's own, when postconf is installed)")
    c.add_argument("--no-postfix", action="store_true",
                   help="do not look at Postfix (the MTA is sendmail, or another host)")
    c.add_argument("--sendmail-cf", metavar="FILE",
                   help="also check this sendmail .cf (or .mc) for listgate's "
                        "INPUT_MAIL_FILTER")
    c.set_defaults(func=run, needs_config=None)
    p.set_defaults(func=lambda _args, _cfg: (p.print_help(sys.stderr), 2)[1],
                   needs_config=lambda _args: False)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from listgate.backends import open_backend

    backend = open_backend(cfg)
    try:
        result = run_checks(cfg, backend, args.resolve, mta={
            "postfix_config": args.postfix_config, "postfix": not args.no_postfix,
            "sendmail_cf": args.sendmail_cf})
    finally:
        backend.close()
    if args.json:
        json.dump(result, sys.stdout, ensure_ascii=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(as_text(result))
    if not result["ok"]:
        failed = [what for what in ("backend", "dns") if not result[what]["ok"]]
        print(f"listgate config check: {' and '.join(failed)} not usable; see above",
              file=sys.stderr)
        return 1
    return 0
