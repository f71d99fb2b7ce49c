"""The Debian package, as an admin gets it: build, lintian, install, run, purge.

Runs as root (like CI): ``scripts/build-deb.sh`` builds build/deb/listgate_VERSION_all.deb
with Debian's python3, ``apt-get install ./...deb`` pulls Debian's python3-milter &c.,
then the packaged /usr/bin/listgate is checked, the unit tests run against the
installed package under Debian's python3, and the packaged daemon is started once by
hand as user listgate on the packaged config (in a private mount namespace, so the
host's /run/listgate and /var/lib/listgate are not touched).  ``apt-get purge`` ends
it; the fixture then removes what the install added (dependencies, the listgate
user, directories), so the machine is left as it was found.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from listgate import __version__

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEB = ROOT / "build" / "deb" / f"listgate_{__version__}_all.deb"
CONFIG = "/etc/listgate/listgate.cfg"
INSTALLED = {
    "/usr/bin/listgate": None,
    "/lib/systemd/system/listgate.service": ROOT / "systemd" / "listgate.service",
    "/usr/lib/sysusers.d/listgate.conf": ROOT / "systemd" / "listgate.sysusers",
    "/usr/lib/tmpfiles.d/listgate.conf": ROOT / "systemd" / "listgate.tmpfiles",
    CONFIG: ROOT / "etc" / "listgate.cfg",
    "/etc/logrotate.d/listgate": ROOT / "packaging" / "debian" / "listgate.logrotate",
}
# what tmpfiles.d creates (and chowns, if it exists already) at install
DIRS = ("/run/listgate", "/var/lib/listgate", "/var/log/listgate")
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
APT_OPTS = ["-o", "DPkg::Lock::Timeout=120", "-q"]
DEBIAN_PATH = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def run(cmd: list[str], *, check: bool = True, **kw: object) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; on failure the assertion shows it."""
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if check:
        assert p.returncode == 0, f"{cmd} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def packages() -> set[str]:
    out = run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}


def exists(name: str, db: str) -> bool:
    try:
        (pwd.getpwnam if db == "passwd" else grp.getgrnam)(name)
    except KeyError:
        return False
    return True


#: what `make package` printed, for the test that reads it
BUILD: dict[str, str] = {}


@pytest.fixture(scope="module")
def deb() -> Path:
    """The .deb built from this tree by `make package`, with the network cut off as a
    Debian build has it (``unshare --net``: a new network namespace, only a loopback
    that is down), so anything the build tried to download would fail it."""
    assert os.geteuid() == 0, "the package tests install a .deb: run as root (make test)"
    p = run(["unshare", "--net", "--", "make", "-C", str(ROOT), "package"], check=False)
    BUILD["output"] = p.stdout + p.stderr
    assert p.returncode == 0, f"make package without network failed:\n{BUILD['output']}"
    assert DEB.is_file()
    return DEB


def test_package_builds_without_network(deb: Path) -> None:
    """The fixture built it in a network namespace of its own: prove that namespace
    really had no network (a connection out fails) and that the build said done."""
    probe = run(["unshare", "--net", "--", sys.executable, "-c",
                 "import socket\n"
                 "try:\n"
                 "    socket.create_connection(('1.1.1.1', 443), timeout=3); print('online')\n"
                 "except OSError as e:\n"
                 "    print('offline', e.errno)"])
    assert probe.stdout.startswith("offline"), probe.stdout
    assert f"build-deb: {DEB.relative_to(ROOT)}" in BUILD["output"], BUILD["output"][-2000:]


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[None]:
    """The package installed with apt-get; afterwards everything it added is removed."""
    before = packages()
    assert "listgate" not in before, "a listgate package is installed already"
    user_before, group_before = exists("listgate", "passwd"), exists("listgate", "group")
    dirs_before = {d: os.stat(d) for d in DIRS if os.path.exists(d)}
    try:
        run(["apt-get", "install", "-y", *APT_OPTS, str(deb)], env=APT_ENV)
        yield
    finally:
        if "listgate" in packages():
            run(["apt-get", "purge", "-y", *APT_OPTS, "listgate"], env=APT_ENV)
        # the dependencies apt pulled in (marked automatic; a package someone else
        # installed meanwhile on purpose is marked manual and stays)
        auto = set(run(["apt-mark", "showauto"]).stdout.split())
        added = sorted((packages() - before) & auto)
        if added:
            run(["apt-get", "purge", "-y", *APT_OPTS, *added], env=APT_ENV)
        if not user_before and exists("listgate", "passwd"):
            run(["userdel", "listgate"])
        if not group_before and exists("listgate", "group"):
            run(["groupdel", "listgate"])
        for d in DIRS:
            if d in dirs_before:
                st = dirs_before[d]
                os.chown(d, st.st_uid, st.st_gid)
                os.chmod(d, st.st_mode & 0o7777)
            elif os.path.isdir(d):
                shutil.rmtree(d)


def test_changelog_version_is_the_package_version() -> None:
    first = (ROOT / "packaging" / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"listgate \({re.escape(__version__)}\) ", first), first


def test_lintian_reports_no_errors_and_no_warnings(deb: Path) -> None:
    p = run(["lintian", "--fail-on", "error,warning", str(deb)], check=False)
    tags = [line for line in p.stdout.splitlines() if re.match(r"[EW]: ", line)]
    print("lintian:", *(tags or ["(no errors, no warnings)"]), sep="\n  ")
    assert p.returncode == 0 and not tags, p.stdout


def test_man_pages_installed_and_readable(installed: None) -> None:
    """`man listgate` and `man listgate.cfg` on the installed package: the pages the
    tree's man/ holds (generated from --help and etc/listgate.cfg)."""
    env = {**DEBIAN_PATH, "MANWIDTH": "80"}
    env.pop("MANPATH", None)
    for page, path, title in (("listgate", "/usr/share/man/man8/listgate.8.gz", "LISTGATE(8)"),
                              ("listgate.cfg", "/usr/share/man/man5/listgate.cfg.5.gz",
                               "LISTGATE.CFG(5)")):
        assert run(["man", "-w", page], env=env).stdout.strip() == path
        p = run(["man", "--warnings", page], env=env)
        assert p.stderr == "" and p.stdout.lstrip().startswith(title), p.stderr
    text = run(["man", "listgate"], env=env).stdout
    assert "listgate members list" in " ".join(text.split())
    assert "[milter]" in run(["man", "listgate.cfg"], env=env).stdout


def test_config_check_names_debians_public_suffix_list(installed: None) -> None:
    """With Debian's publicsuffix installed (the package recommends it), that list is
    the one in use, and config check says so with its date."""
    assert os.path.isfile("/usr/share/publicsuffix/public_suffix_list.dat")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.cfg"
        cfg.write_text(f"[sqlite]\npath = {tmp}/db\n[milter]\nsocket = unix:{tmp}/s\n")
        run(["/usr/bin/listgate", "-c", str(cfg), "db", "init"], env=DEBIAN_PATH)
        p = run(["/usr/bin/listgate", "-c", str(cfg), "config", "check", "--json",
                 "--no-postfix", "--resolve", "localhost"], env=DEBIAN_PATH, check=False)
    psl = json.loads(p.stdout)["public_suffix_list"]
    assert psl["path"] == "/usr/share/publicsuffix/public_suffix_list.dat", psl
    assert psl["origin"] == "Debian's publicsuffix package"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", psl["date"]), psl


def test_pip_install_installs_the_man_pages() -> None:
    """A wheel of this tree (built offline, with the venv's setuptools) carries both
    pages as data files, and `man` finds them next to the venv's bin/."""
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", tmp, str(ROOT)])
        (wheel,) = Path(tmp).glob("listgate-*.whl")
        venv = Path(tmp) / "venv"
        run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
             "install", "-q", "--no-deps", "--no-index", str(wheel)])
        env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "MANWIDTH": "80"}
        for page, sub in (("listgate", "man8/listgate.8"),
                          ("listgate.cfg", "man5/listgate.cfg.5")):
            assert (venv / "share" / "man" / sub).read_text() == (
                ROOT / "man" / Path(sub).name).read_text()
            assert run(["man", "-w", page], env=env).stdout.strip() == str(
                venv / "share" / "man" / sub)


def test_installs_its_files_and_conffile(installed: None) -> None:
    for path, source in INSTALLED.items():
        assert os.path.isfile(path), path
        if source is not None:
            assert Path(path).read_text() == source.read_text(), path
    conffiles = run(["dpkg-query", "-W", "-f", "${Conffiles}", "listgate"]).stdout
    assert CONFIG in conffiles and "/etc/logrotate.d/listgate" in conffiles
    for d in DIRS:  # tmpfiles.d, at install
        st = os.stat(d)
        assert (pwd.getpwuid(st.st_uid).pw_name, st.st_mode & 0o777) == ("listgate", 0o750)


def test_first_install_creates_the_store_and_nothing_else_does(installed: None) -> None:
    """postinst runs ``db init`` as user listgate (the daemon and the unit never create
    it: a store lost later must not come back empty)."""
    db = Path("/var/lib/listgate/listgate.db")
    assert db.is_file()
    assert pwd.getpwuid(db.stat().st_uid).pw_name == "listgate"
    unit = Path("/lib/systemd/system/listgate.service").read_text()
    assert not re.search(r"^ExecStartPre=.*db init", unit, re.M)


def test_upgrades_reload_and_never_stop_or_restart(deb: Path, tmp_path: Path) -> None:
    """An upgrade must not refuse mail: no stop in prerm on upgrade, no restart in
    postinst; a running service is reloaded (a fresh worker takes the socket over)."""
    run(["dpkg-deb", "-e", str(deb), str(tmp_path)])
    postinst = (tmp_path / "postinst").read_text()
    prerm = (tmp_path / "prerm").read_text()
    assert "deb-systemd-invoke reload listgate.service" in postinst
    assert "db upgrade --if-exists" in postinst
    for script in (postinst, prerm):
        assert not re.search(r"deb-systemd-invoke .*\b(restart|try-restart)\b", script)
    stops = re.findall(r".*deb-systemd-invoke stop.*", prerm)
    assert stops and 'if [ "$1" = remove ]' in prerm.split(stops[0])[0].splitlines()[-1]


def test_listgate_user_exists(installed: None) -> None:
    user = pwd.getpwnam("listgate")
    assert user.pw_uid < 1000 and user.pw_shell == "/usr/sbin/nologin"
    assert grp.getgrgid(user.pw_gid).gr_name == "listgate"


def test_packaged_command_runs_on_debian_python(installed: None) -> None:
    assert Path("/usr/bin/listgate").read_text().startswith("#!/usr/bin/python3\n")
    p = run(["/usr/bin/listgate", "--version"], env=DEBIAN_PATH)
    assert p.stdout.strip() == f"listgate {__version__}"


def test_packaged_config_uses_packaged_paths(installed: None) -> None:
    code = ("from listgate import config; import pathlib; "
            f"c = config.parse(pathlib.Path('{CONFIG}').read_text(), '{CONFIG}'); "
            "print(c.milter.socket, c.sqlite.path, c.milter.log_file)")
    p = run(["/usr/bin/python3", "-c", code], env=DEBIAN_PATH, cwd="/")
    assert p.stdout.split() == ["unix:/run/listgate/listgate.sock",
                                "/var/lib/listgate/listgate.db", "-"]


def test_installed_unit_verifies(installed: None) -> None:
    p = run(["systemd-analyze", "verify", "/lib/systemd/system/listgate.service"])
    assert p.stderr == "", p.stderr


#: the Suggests the unit tests need
SUGGESTED = ["python3-prometheus-client", "python3-psycopg", "python3-psycopg-pool"]


def test_unit_tests_pass_on_debian_python_and_packages(installed: None) -> None:
    """The code as installed, on Debian 12's python3-dnspython 2.3, python3-spf..."""
    with tempfile.TemporaryDirectory() as cwd:  # not the tree: import the package
        where = run(["/usr/bin/python3", "-c",
                     "import listgate, listgate.authn as a, dns.version, spf, Milter; "
                     "print(listgate.__file__, a.PublicSuffixList.__module__, "
                     "dns.version.version, spf.__file__, Milter.__file__)"],
                    env=DEBIAN_PATH, cwd=cwd).stdout.split()
        assert where[0] == "/usr/lib/python3/dist-packages/listgate/__init__.py"
        assert where[1] == "listgate._vendor.publicsuffixlist"
        assert all(w.startswith("/usr/lib/python3/") for w in where[3:]), where
        # [metrics] needs the suggested python3-prometheus-client, the PostgreSQL store
        # python3-psycopg and python3-psycopg-pool: installed for this
        # test, marked automatic so the fixture's clean-up removes it again.  The chart
        # (matplotlib, 60 Debian packages) is left to the venv suite: its one test is
        # deselected here, every other unit test runs on Debian's packages.
        run(["apt-get", "install", "-y", *APT_OPTS, *SUGGESTED], env=APT_ENV)
        run(["apt-mark", "auto", *SUGGESTED])
        p = run(["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "-c", "/dev/null", "--rootdir", str(ROOT / "tests"),
                 "--deselect", "unit/test_report.py::test_chart_png",
                 str(ROOT / "tests" / "unit")], env=DEBIAN_PATH, cwd=cwd, check=False)
    summary = p.stdout.strip().splitlines()[-1]
    print(f"unit tests under Debian python3 (dnspython {where[2]}): {summary}")
    assert p.returncode == 0 and re.search(r"\d+ passed", summary), p.stdout[-3000:]


NAMESPACE_SCRIPT = r"""
set -eu
# the unit's RuntimeDirectory= and StateDirectory=, private to this mount namespace
for d in /run/listgate /var/lib/listgate; do
    t=$(mktemp -d); chown listgate:listgate "$t"; chmod 0750 "$t"; mount --bind "$t" "$d"
done
lg() { runuser -u listgate -- /usr/bin/listgate -c /etc/listgate/listgate.cfg "$@"; }
lg db init                       # what the package's postinst does at first install
lg lists create dev@lists.example.org >/dev/null
lg members add dev@lists.example.org alice@example.org >/dev/null
# the unit's ExecStart, under MemoryDenyWriteExecute's rule; setpriv execs (no
# parent left behind), so $! is the daemon
setpriv --reuid=listgate --regid=listgate --init-groups -- /usr/bin/python3 \
    "$HERE/mdwe_exec.py" /usr/bin/listgate -c /etc/listgate/listgate.cfg serve 2>"$LOG" &
pid=$!
for _ in $(seq 100); do [ -S /run/listgate/listgate.sock ] && break; sleep 0.1; done
echo "socket: $(stat -c '%U:%G %a' /run/listgate/listgate.sock)"
echo "daemon user: $(stat -c %U "/proc/$pid")"
try() {  # connect as uid nobody with the given extra groups (postfix, say)
    setpriv --reuid=nobody --regid=nogroup --groups="$1" -- /usr/bin/python3 -c '
import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("/run/listgate/listgate.sock"); print("connected")
except OSError as e:
    print(type(e).__name__)'
}
echo "member of group listgate: $(try "$(getent group listgate | cut -d: -f3)")"
echo "not a member: $(try "$(getent group nogroup | cut -d: -f3)")"
echo "post: $("$PY" "$HERE/milter_probe.py" /run/listgate/listgate.sock \
    alice@example.org dev@lists.example.org)"
echo "stranger: $("$PY" "$HERE/milter_probe.py" /run/listgate/listgate.sock \
    eve@example.net dev@lists.example.org)"
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
echo "exit: $status"
"""


def test_packaged_daemon_serves_as_listgate_under_mdwe(installed: None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "daemon.log"
        started = time.monotonic()
        p = run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                 NAMESPACE_SCRIPT],
                env={**DEBIAN_PATH, "HERE": str(HERE), "LOG": str(log),
                     "PY": sys.executable}, check=False, timeout=120)
        elapsed = time.monotonic() - started
        text = log.read_text()
    lines = dict(line.split(": ", 1) for line in p.stdout.splitlines() if ": " in line)
    assert p.returncode == 0, (p.stdout, p.stderr, text)
    assert lines["socket"] == "listgate:listgate 770"
    assert lines["daemon user"].strip() == "listgate"
    assert lines["member of group listgate"] == "connected"
    assert lines["not a member"] == "PermissionError"
    post, stranger = json.loads(lines["post"]), json.loads(lines["stranger"])
    assert (post["mail"], post["rcpt"], post["eom"][-1]) == ("c", "c", "c"), post
    assert stranger["eom"][-1] == "y", stranger  # SMFIR_REPLYCODE: the 550
    assert "mdwe_exec: MDWE flags 1" in text
    # each worker listens on a file of its own, renamed to the public path once ready
    assert re.search(r"starting: socket=unix:/run/listgate/listgate\.sock "
                     r"mode=enforce backend=sqlite", text), text
    assert re.search(r"REJECT: list=dev@lists\.example\.org .*eve@example\.net", text), text
    assert lines["exit"] == "0", text
    assert elapsed < 60


def test_purge_removes_the_package(installed: None) -> None:
    run(["apt-get", "purge", "-y", *APT_OPTS, "listgate"], env=APT_ENV)
    assert "listgate" not in packages()
    for path in INSTALLED:
        assert not os.path.exists(path), path
    assert not os.path.exists("/etc/listgate")
