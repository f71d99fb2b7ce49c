#!/usr/bin/env bash
# Install the Debian packages listgate needs (idempotent).
#
#   scripts/install-debian-deps.sh run    what `make run` needs:
#     libmilter-dev  needed to build pymilter from PyPI
#     python3-venv, python3-dev, gcc   a virtualenv, and building pymilter in it
#   scripts/install-debian-deps.sh test   that, plus what the end-to-end tests use:
#     postfix        private test instances (postfix -c DIR) and smtp-sink
#     dnsmasq-base   the dnsmasq binary only: the `dnsmasq` package would add a system
#                    service listening on port 53; the tests run their own instances
#     postgresql     initdb/pg_ctl for the private clusters of the PostgreSQL store's
#                    tests (own port and socket directory under /var/tmp); the
#                    system cluster the package makes is never started (policy-rc.d)
#     openssl        the test CA and certificates of the Mailman 3 over HTTPS tests
#     libwrap0, m4   what the private sendmail of the sendmail tests needs (its binary
#                    links libwrap; m4 builds sendmail.cf). sendmail itself conflicts
#                    with postfix as a package: scripts/install-sendmail.sh unpacks it
#                    into a private directory instead
#     (and everything `package` installs: `make test` builds and checks the .deb)
#   scripts/install-debian-deps.sh package   what `make package` needs:
#     dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all
#     python3-setuptools   build the .deb with Debian's own python3 (packaging/debian)
#     lintian        check the .deb
#     man-db         `man listgate` on the installed package
#     publicsuffix   Debian's Public Suffix List, which listgate prefers to its own copy
#     systemd        systemd-analyze verify / security --offline on the unit
#     python3-pytest the unit tests run under Debian's python3 against the package
#
# Runs `apt-get update` only when a package is missing. Works as root without a
# terminal (CI=true, stdin closed) and without systemd: while it installs, a
# policy-rc.d forbids starting services, so the Debian postfix package neither starts
# a system Postfix nor fails its postinst; a system Postfix it started anyway is
# stopped again. Python packages (dnspython, pytest...) come from the project's
# Python dependencies, not from here.
set -euo pipefail

PACKAGES=(libmilter-dev python3-venv python3-dev gcc)
PACKAGING=(dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all
           python3-setuptools lintian systemd python3-pytest man-db publicsuffix)
case "${1:-test}" in
    run) ;;
    test) PACKAGES+=(postfix dnsmasq-base postgresql openssl libwrap0 m4 "${PACKAGING[@]}") ;;
    package) PACKAGES+=("${PACKAGING[@]}") ;;
    *) echo "usage: $0 run|test|package" >&2; exit 2 ;;
esac
log() { echo "install-debian-deps: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n -- "$0" "$@"
    fi
    log "must run as root (apt-get install)"
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    log "all present: ${PACKAGES[*]}"
    exit 0
fi
log "installing: ${missing[*]}"

export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true
exec </dev/null

# the PostgreSQL clusters already running (left alone: they are the admin's)
pg_online_before=$(pg_lsclusters --no-header 2>/dev/null | awk '$4 == "online" {print $1 "/" $2}' || true)

postfix_installed_before=no
if dpkg-query -W -f='${db:Status-Status}' postfix 2>/dev/null | grep -qx installed; then
    postfix_installed_before=yes
fi

# Answer postfix's debconf questions: a loopback-only system MTA (the tests never use
# it; they only need /etc/postfix/main.cf to exist).
debconf-set-selections <<'SEL'
postfix postfix/main_mailer_type select Local only
postfix postfix/mailname string localhost.localdomain
SEL

# Forbid service starts during the install (no systemd here; Debian's invoke-rc.d
# honours policy-rc.d exit code 101). Keep an existing policy-rc.d untouched.
policy=/usr/sbin/policy-rc.d
created_policy=no
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from listgate scripts/install-debian-deps.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=yes
fi
cleanup() {
    if [ "$created_policy" = yes ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}"

# A system Postfix must not be left running (the tests start private instances).
if [ "$postfix_installed_before" = no ] && postfix status >/dev/null 2>&1; then
    log "stopping the system Postfix the package started"
    postfix stop >/dev/null 2>&1 || true
fi

# Nor a system PostgreSQL (the tests run private clusters on their own ports).
if [ "${1:-test}" = test ] && command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name port status _rest; do
        if [ "$status" = online ] && ! printf '%s\n' "${pg_online_before:-}" |
                grep -qx "$ver/$name"; then
            log "stopping the system PostgreSQL cluster $ver/$name the package started"
            pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
        fi
    done
fi

tools=()
[ "${1:-test}" = test ] && tools=(postfix postconf smtp-sink dnsmasq openssl m4)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
        log "ERROR: $tool missing after install"
        exit 1
    }
done
if [ "${1:-test}" = test ] && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    log "ERROR: pg_ctl missing after install"
    exit 1
fi
log "done"
