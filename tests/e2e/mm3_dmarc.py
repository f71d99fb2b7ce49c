"""Mailman 3's own DMARC rule against a given name server: run by Mailman's Python.

    python mm3_dmarc.py PORT SUFFIX_LIST_FILE TIMEOUT < from-values.json > answers.json

Reads a JSON list of From header values; writes ``{value: true|false}``: what
``mailman.rules.dmarc`` decides for a list with ``dmarc_mitigate_action`` set and no
``dmarc_addresses`` -- the address taken as ``DMARCMitigation.check`` takes it, then
``maybe_mitigate``.  Mailman's ``dns.resolver.Resolver()`` reads /etc/resolv.conf; it
is replaced by one that asks 127.0.0.1:PORT only, and Mailman's configuration (which
would need a whole Mailman instance) by the two timeouts the rule reads.  The suffix
list is parsed from SUFFIX_LIST_FILE so that both sides use the same data.

Not imported by the tests: it runs in Mailman's venv, not listgate's.
"""

import json
import sys
import types
from email import message_from_string
from email.utils import parseaddr

import dns.resolver
from mailman.rules import dmarc


def main() -> None:
    port, suffix_file, timeout = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    real_resolver = dns.resolver.Resolver

    def resolver(*_args, **_kwargs):
        r = real_resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = port
        return r

    dmarc.dns.resolver.Resolver = resolver
    dmarc.config = types.SimpleNamespace(dmarc=types.SimpleNamespace(
        resolver_timeout=f"{timeout}s", resolver_lifetime=f"{timeout}s"))
    dmarc.parse_suffix_list(suffix_file)
    mlist = types.SimpleNamespace(dmarc_addresses=[], list_name="list")
    out = {}
    for value in json.load(sys.stdin):
        msg = message_from_string(f"From: {value}\nTo: list@lists.test\n\n")
        _name, address = parseaddr(str(msg.get("from", "")))
        out[value] = bool(dmarc.maybe_mitigate(mlist, address))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
