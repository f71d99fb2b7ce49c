"""The pure parts of config check's MTA side: milter addresses, chroot mapping, the
stage budgets' composition, and the Public Suffix List's choice (the findings
themselves are in tests/e2e/test_configcheck_mta.py, against real set-ups)."""

from __future__ import annotations

from pathlib import Path

from listgate import authn, config, configcheck, mtacheck
from listgate.mtacheck import Endpoint


def test_postfix_milter_lists() -> None:
    assert mtacheck.parse_postfix_milters(
        "unix:/a.sock, inet:127.0.0.1:8891 { inet:[::1]:8894, default_action=accept }"
    ) == ["unix:/a.sock", "inet:127.0.0.1:8891", "inet:[::1]:8894"]
    assert mtacheck.parse_postfix_milters("") == []


def test_postfix_paths_inside_and_outside_the_chroot() -> None:
    q = "/var/spool/postfix"
    assert mtacheck.postfix_endpoint("unix:/listgate/l.sock", q, q) == Endpoint(
        "unix", path="/var/spool/postfix/listgate/l.sock")
    assert mtacheck.postfix_endpoint("unix:/run/l.sock", None, q) == Endpoint(
        "unix", path="/run/l.sock")
    assert mtacheck.postfix_endpoint("unix:private/l", None, q) == Endpoint(
        "unix", path="/var/spool/postfix/private/l")
    assert mtacheck.postfix_endpoint("inet:[::1]:8894", None, q) == Endpoint(
        "inet", host="::1", port=8894)
    assert mtacheck.postfix_form(Endpoint("unix", path="/run/l.sock"), q) is None
    assert mtacheck.postfix_form(Endpoint("unix", path=f"{q}/lg/l.sock"), q) == "unix:/lg/l.sock"
    assert mtacheck.postfix_form(Endpoint("inet", host="0.0.0.0", port=9), None) == (
        "inet:127.0.0.1:9")


def test_inet_listener_on_any_address_is_reached_on_loopback() -> None:
    any_ = mtacheck.listgate_endpoint("inet:8894@0.0.0.0")
    assert mtacheck.same_endpoint(Endpoint("inet", host="127.0.0.1", port=8894), any_)
    assert not mtacheck.same_endpoint(Endpoint("inet", host="127.0.0.1", port=8895), any_)


def test_master_cf_chroot_and_overrides() -> None:
    services = mtacheck.read_master(
        "smtp inet n - y - - smtpd\n"
        "submission inet n - n - - smtpd -o smtpd_milters=unix:/x -o syslog_name=sub\n"
        "cleanup unix n - - - 0 cleanup\n")
    assert [(s.name, s.chroot, s.overrides) for s in services] == [
        ("smtp", True, {}), ("submission", False, {"smtpd_milters": "unix:/x",
                                                   "syslog_name": "sub"}),
        ("cleanup", False, {})]


def test_stage_budgets_composition() -> None:
    cfg = config.parse("[spf]\ntimeout = 7\n[dns]\ntimeout = 3\n[mailman3]\ntimeout = 4\n"
                       "[approved]\nwait = 1.5\n")
    assert configcheck.stage_budgets(cfg) == {"mail": 7, "rcpt": 4, "eom": 7 + 3 + 4 + 3 + 1.5}
    assert configcheck.stage_budgets(config.defaults()) == {"mail": 20, "rcpt": 5, "eom": 37}


def test_budget_warnings_name_the_keys() -> None:
    (w,) = mtacheck.compare_budgets({"mail": 20, "eom": 37},
                                    {"mail": ("Postfix milter_command_timeout", "20s"),
                                     "eom": ("Postfix milter_content_timeout", "5m")})
    assert w.startswith("MAIL FROM: listgate may wait up to 20 s ([spf] timeout), not below "
                        "Postfix milter_command_timeout = 20s (20 s)")


def test_public_suffix_list_falls_back_to_the_bundled_copy(tmp_path: Path) -> None:
    info = authn.public_suffix_list(str(tmp_path / "none.dat"))
    assert info.origin.startswith("the copy bundled with")
    assert info.date_from == "VERSION line" and info.date[:2] == "20"
    debian = tmp_path / "public_suffix_list.dat"
    debian.write_text("// ===BEGIN ICANN DOMAINS===\ncom\n")
    info = authn.public_suffix_list(str(debian))
    assert (info.path, info.origin, info.date_from) == (
        str(debian), "Debian's publicsuffix package", "file time")
