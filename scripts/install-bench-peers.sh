#!/usr/bin/env bash
# The peers `make bench` compares listgate with, each in a venv of its own so that
# their pins never touch listgate's (idempotent; quick when present):
#   pyspf-milter   PyPI spf-engine, the SPF milter an admin would otherwise run
# Mailman 3 (for listgate-mailman3) comes from scripts/install-mailman3.sh.
set -euo pipefail
ROOT=${LISTGATE_BENCH_PEERS:-/var/tmp/listgate-bench/peers}
SPF_ENGINE=spf-engine==3.1.0
# spf-engine does not declare these (Debian packages them as its dependencies)
EXTRA=(pymilter==1.0.5 dnspython==2.9.2)
venv=$ROOT/pyspf-venv
stamp=$venv/.installed-$SPF_ENGINE
if [ -e "$stamp" ]; then
    echo "install-bench-peers: $SPF_ENGINE present in $venv" >&2
    exit 0
fi
rm -rf "$venv"
mkdir -p "$ROOT"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$SPF_ENGINE" "${EXTRA[@]}"
"$venv/bin/python" -c "import spf_engine.milter_spf, Milter, spf"
touch "$stamp"
echo "install-bench-peers: installed $SPF_ENGINE in $venv" >&2
