#!/usr/bin/env bash
# Unpack Debian's sendmail into a private directory for the sendmail end-to-end tests
# (idempotent; a second run only compares a version stamp).
#
#   scripts/install-sendmail.sh            -> /var/tmp/listgate-sendmail
#   LISTGATE_SENDMAIL_ROOT=DIR scripts/install-sendmail.sh
#
# The sendmail packages conflict with postfix (both provide mail-transport-agent), and
# the tests need both, so sendmail is not installed: `apt-get download` fetches
# sendmail-bin (the binary: usr/libexec/sendmail/sendmail), sendmail-base and
# sendmail-cf (the m4 files that build sendmail.cf) and `dpkg -x` unpacks them. No
# maintainer script runs: no daemon, no /etc/mail, no user is created. The libraries the
# binary links that are not part of a base system (libwrap0) and m4 come from
# scripts/install-debian-deps.sh test, which must run first.
set -euo pipefail

DEST=${LISTGATE_SENDMAIL_ROOT:-/var/tmp/listgate-sendmail}
PACKAGES=(sendmail-bin sendmail-base sendmail-cf)
BINARY=usr/libexec/sendmail/sendmail
log() { echo "install-sendmail: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n -- "$0" "$@"
    fi
    log "must run as root (apt-get download into $DEST)"
    exit 1
fi
exec </dev/null

# "sendmail-bin=8.17.1.9-2+deb12u2 ..." for the versions apt would fetch now (one
# apt-cache call: this is the whole cost of a run when the stamp matches)
candidates() {
    local out
    out=$(apt-cache policy "${PACKAGES[@]}" 2>/dev/null | awk '
        /^[^ ]/ { sub(":$", "", $1); pkg = $1 }
        /Candidate:/ && $2 != "(none)" { printf "%s%s=%s", sep, pkg, $2; sep = " " }')
    [ "$(wc -w <<<"$out")" -eq "${#PACKAGES[@]}" ] || return 1
    echo "$out"
}

if ! wanted=$(candidates); then
    log "sendmail packages unknown to apt: apt-get update"
    apt-get update -qq
    wanted=$(candidates) || { log "ERROR: apt knows no ${PACKAGES[*]}"; exit 1; }
fi
stamp="$DEST/.listgate-sendmail-version"
if [ -x "$DEST/$BINARY" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    log "present: $wanted in $DEST"
    exit 0
fi

log "fetching $wanted"
tmp=$(mktemp -d "${DEST%/*}/.listgate-sendmail.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
mkdir "$tmp/debs" "$tmp/root"
# apt-get download drops privileges to _apt: give it a directory it may write in
if id _apt >/dev/null 2>&1; then chown _apt "$tmp/debs"; fi
read -ra fetch <<<"$wanted"
(cd "$tmp/debs" && apt-get download -q "${fetch[@]}" >/dev/null)
for deb in "$tmp"/debs/*.deb; do
    dpkg -x "$deb" "$tmp/root"
done
[ -x "$tmp/root/$BINARY" ] || { log "ERROR: no $BINARY in ${PACKAGES[*]}"; exit 1; }
if ldd "$tmp/root/$BINARY" | grep -q 'not found'; then
    log "ERROR: $BINARY lacks libraries (run scripts/install-debian-deps.sh test):"
    ldd "$tmp/root/$BINARY" | grep 'not found' >&2
    exit 1
fi
echo "$wanted" >"$tmp/root/.listgate-sendmail-version"
rm -rf "$DEST"
mv "$tmp/root" "$DEST"
chmod 755 "$DEST"
log "unpacked into $DEST"
