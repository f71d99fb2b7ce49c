"""The composition root: builds the Engine from a Config.

Shared by the daemon and ``listgate check`` so both make their decisions with the
same resolver, backend, caches and SPF settings.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Callable

from listgate.backends import open_backend
from listgate.config import Config
from listgate.dmarc import DmarcChecker
from listgate.engine import Engine
from listgate.passwords import PasswordChecker
from listgate.spfcheck import SpfChecker, configure_dns


def load_is_dynip() -> Callable[[str, str], bool]:
    """pymilter's dynamic-PTR heuristic (``Milter.dynip.is_dynip``), remembered per
    (PTR name, IP): the same MTAs connect again and again, and it is a pure function."""
    from Milter.dynip import is_dynip

    return functools.lru_cache(maxsize=4096)(is_dynip)


def receiver_name(cfg: Config) -> str:
    """The name we write into Received-SPF: ``authserv_id`` or this host's FQDN."""
    return cfg.milter.authserv_id or socket.getfqdn()


def build_engine(cfg: Config, log: logging.Logger | None = None,
                 background_refresh: bool = False) -> Engine:
    """Everything the decision needs, from the config; raises on a bad backend config.

    ``background_refresh``: the daemon's engine refreshes what it remembers about the
    lists in a thread of its own; ``listgate check`` waits for it instead."""
    configure_dns(cfg.dns.nameservers, cfg.dns.timeout)
    name = receiver_name(cfg)
    spf = SpfChecker(name, cfg.spf.timeout, cfg.dns.timeout, cfg.spf.cache_ttl)
    return Engine(cfg, open_backend(cfg), spf, load_is_dynip(), log, host_name=name,
                  dmarc=DmarcChecker(cfg.dns.timeout),
                  passwords=PasswordChecker.from_config(cfg),
                  background_refresh=background_refresh)
