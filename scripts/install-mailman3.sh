#!/usr/bin/env bash
# Install GNU Mailman 3.3.10 into its own virtualenv for listgate's tests (idempotent).
#
#   scripts/install-mailman3.sh
#
# The venv is $LISTGATE_MM3_VENV (default /var/tmp/listgate-mailman3/venv), made with
# $LISTGATE_MM3_PYTHON (default python3; needs the venv module: python3-venv on
# Debian). Does nothing if $VENV/bin/mailman already reports version 3.3.10; a venv
# that is broken or has another version is removed and made anew.
#
# Pins: SQLAlchemy < 2.1 (with 2.1 every REST collection/member endpoint of Mailman
# 3.3.10 answers 500); falcon < 5 and aiosmtpd < 2 (the REST and LMTP runners'
# frameworks; majors newer than the ones this was tested with may break 3.3.10).
# Only Mailman's own Python packages are needed: no Debian packages, no MTA
# (the tests use mailman.mta.null.NullMTA and a loopback SMTP sink).
#
# Works as root without a terminal (CI=true, stdin closed). Prints how long it took.
set -euo pipefail
exec </dev/null

VERSION=3.3.10
VENV=${LISTGATE_MM3_VENV:-/var/tmp/listgate-mailman3/venv}
PYTHON=${LISTGATE_MM3_PYTHON:-python3}
START=$(date +%s.%N)

log() { echo "install-mailman3: $*" >&2; }
elapsed() { awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

installed_version() {
    # "GNU Mailman 3.3.10 (Tom Sawyer)" -> 3.3.10; empty if missing or broken.
    [ -x "$VENV/bin/mailman" ] || return 0
    "$VENV/bin/mailman" --version 2>/dev/null | awk '{ print $3 }' || true
}

have=$(installed_version)
if [ "$have" = "$VERSION" ]; then
    log "Mailman $VERSION already installed in $VENV (checked in $(elapsed) s)"
    exit 0
fi

# One installer at a time (two test runs starting together); then look again.
mkdir -p -- "$(dirname -- "$VENV")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
    have=$(installed_version)
    if [ "$have" = "$VERSION" ]; then
        log "Mailman $VERSION was installed in $VENV meanwhile ($(elapsed) s)"
        exit 0
    fi
fi

if [ -e "$VENV" ]; then
    log "removing $VENV (mailman version there: ${have:-none})"
    rm -rf -- "$VENV"
fi

log "creating $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
if ! "$PYTHON" -m venv "$VENV"; then
    log "'$PYTHON -m venv' failed: install python3-venv (scripts/install-debian-deps.sh run)"
    rm -rf -- "$VENV"
    exit 1
fi

log "installing mailman==$VERSION"
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input \
        "mailman==$VERSION" 'sqlalchemy>=2.0,<2.1' 'falcon<5' 'aiosmtpd<2'; then
    log "pip install failed after $(elapsed) s"
    rm -rf -- "$VENV"
    exit 1
fi

have=$(installed_version)
if [ "$have" != "$VERSION" ]; then
    log "installed, but '$VENV/bin/mailman --version' reports '${have:-nothing}'"
    "$VENV/bin/mailman" --version >&2 || true
    exit 1
fi
log "Mailman $VERSION installed in $VENV in $(elapsed) s"
