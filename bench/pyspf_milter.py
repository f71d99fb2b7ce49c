"""Run PyPI's ``pyspf-milter`` (spf-engine) against the benchmark's own DNS server.

pyspf-milter is the SPF milter an admin would otherwise run (Debian's
``pyspf-milter`` package ships the same code).  Unchanged, except that dnspython's
default resolver is pointed at the benchmark's dnsmasq (which serves the SPF records
on a loopback port, like a local caching resolver would), exactly as listgate's
``[dns] nameservers`` does.  Like a stock install it has no answer cache of its own.

Usage (with the interpreter of the venv ``scripts/install-bench-peers.sh`` made)::

    python bench/pyspf_milter.py CONFIG HOST:PORT
"""

from __future__ import annotations

import sys

import dns.resolver

try:
    import dns.nameserver

    HAVE_NAMESERVER = True
except ImportError:  # dnspython < 2.4
    HAVE_NAMESERVER = False


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    host, _, port = argv[2].rpartition(":")
    res = dns.resolver.Resolver(configure=False)
    if HAVE_NAMESERVER:
        res.nameservers = [dns.nameserver.Do53Nameserver(host, port=int(port))]
    else:
        res.nameservers = [host]
        res.nameserver_ports = {host: int(port)}
    dns.resolver.default_resolver = res
    from spf_engine.milter_spf import main as pyspf_main

    sys.argv = ["pyspf-milter", argv[1]]
    return pyspf_main() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
