"""Sender authentication: DKIM, SPF alignment, and the Authentication-Results header.

A member address in From: proves nothing by itself.  listgate counts a sender
address as *authenticated* when (the rules of the issue):

* the connection is INTERNAL or came over a trusted submission path: every sender;
* it is the envelope sender and SPF for MAIL FROM passed;
* its domain is *aligned* (relaxed, RFC 7489 section 3.1: same organisational domain
  per the Public Suffix List) with an SPF-pass envelope domain, or with the ``d=`` of a
  DKIM signature that verified.

A member address that is not authenticated is treated as a nonmember; the reason says
why (``From member@x.org not authenticated: SPF softfail, no aligned DKIM``).

This module is pure logic plus library calls (``publicsuffixlist``, ``dkimpy``,
``authres``, dnspython); it knows nothing of pymilter.

Decisions worth knowing:

* The Public Suffix List is Debian's (``/usr/share/publicsuffix``, package
  ``publicsuffix``, kept current by Debian's updates) when it is installed, else the
  copy bundled with ``publicsuffixlist`` (:func:`public_suffix_list`; ``listgate
  config check`` says which and of what date).  ICANN and private sections, so
  ``a.github.io`` and ``b.github.io`` are *not* aligned; it is loaded once at import,
  nothing is fetched at run time.  Unknown TLDs (``.test``)
  count as public suffixes, so ``x.test`` is its own organisational domain.
* DKIM key lookups go through dnspython's default resolver, the one
  :func:`listgate.spfcheck.configure_dns` set up.  NXDOMAIN / no TXT record -> no key
  -> ``permerror``; a timeout, SERVFAIL/REFUSED from every server or no resolver ->
  ``temperror``; the whole verification has one time budget (``timeout``).
* Nothing escapes :func:`verify_dkim`: a malformed signature, bad base64, an
  unparsable message or a key we refuse (RSA modulus over 8192 bits, public exponent
  over 64 bits: pure-Python RSA with those would be a CPU bomb) becomes a result with
  a reason.  At most ``max_signatures`` signatures are checked, the rest are ignored.
  A signature whose h= lacks From is ``permerror`` (RFC 6376 section 6.1.1: dkimpy
  would pass it).  dkimpy's quadratic regexes are kept off hostile input: signature
  fields over 4 KiB are refused, and relaxed bodies are verified with blank runs
  squeezed first (same canonical result, linear time).
* Bodies are collected up to a limit (:class:`BodyCollector`).  A signature over a
  body that was cut off cannot be checked: it is ``neutral`` ("body larger than N
  bytes, not verified"), never ``fail`` -- no false accusation.  The exception is an
  ``l=`` signature whose signed length lies within the complete lines collected: that
  part of the body is all the signature covers, so it is verified normally.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import authres
import dkim
import dkim.util
import dns.exception
import dns.resolver
from dkim.canonicalization import CanonicalizationPolicy, Relaxed

try:
    import publicsuffixlist
except ImportError:  # the Debian package carries it: Debian 12 has no python3-publicsuffixlist
    from listgate._vendor import publicsuffixlist  # type: ignore[no-redef]

from listgate import addresses
from listgate.compat32 import header_block
from listgate.reply import clean, header_value
from listgate.spfcheck import SpfResult

log = logging.getLogger("listgate")

PublicSuffixList = publicsuffixlist.PublicSuffixList

# --------------------------------------------------------------------------- alignment

#: Debian's Public Suffix List (package ``publicsuffix``), preferred when installed
DEBIAN_PSL = "/usr/share/publicsuffix/public_suffix_list.dat"


@dataclass(frozen=True)
class SuffixListInfo:
    """Which Public Suffix List is in use: alignment and DMARC depend on its age."""

    path: str
    origin: str  #: "Debian's publicsuffix package" or the bundled copy's library
    date: str  #: YYYY-MM-DD: the list's VERSION line, else the file's modification time
    date_from: str  #: "VERSION line" or "file time"


def public_suffix_list(debian: str = DEBIAN_PSL) -> SuffixListInfo:
    """The list to load: Debian's when it is installed (Debian keeps it current, and
    the Debian package needs no copy of its own then), else the one bundled with
    publicsuffixlist (or the Debian package's vendored copy of it)."""
    if os.path.isfile(debian):
        path, origin = debian, "Debian's publicsuffix package"
    else:
        path = publicsuffixlist.PSLFILE
        origin = f"the copy bundled with {publicsuffixlist.__name__}"
    date, date_from = "", "file time"
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
        m = re.search(r"^// VERSION: (\d{4}-\d{2}-\d{2})", head, re.M)
        if m:
            date, date_from = m.group(1), "VERSION line"
        else:
            date = time.strftime("%Y-%m-%d", time.gmtime(os.stat(path).st_mtime))
    except OSError:
        pass
    return SuffixListInfo(path, origin, date, date_from)


#: The list in use (Debian's or the bundled one)
SUFFIX_LIST = public_suffix_list()


def _load_psl(path: str) -> Any:
    with open(path, "rb") as f:
        return PublicSuffixList(f)


#: Built once: parsing the list takes a noticeable moment.
_PSL = _load_psl(SUFFIX_LIST.path)


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def normalise_domain(domain: str) -> str:
    """A domain lowercased, without trailing dots, IDNA A-labels; '' if it is not one.

    Unicode domains are converted with Python's IDNA codec; anything that cannot be a
    domain name (empty labels, over-long labels, unencodable text) gives ''.
    """
    if not isinstance(domain, str):
        return ""
    d = domain.strip().rstrip(".").lower()
    if not d or len(d) > 253 * 4:
        return ""
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii").lower()
        except (UnicodeError, ValueError):
            return ""
    labels = d.split(".")
    if not all(_LABEL.fullmatch(lbl) for lbl in labels) or labels[-1].isdigit():
        return ""  # also IP addresses, [literals] and other things PSL would misread
    return d


def private_suffix(domain: str) -> str | None:
    """``domain``'s public suffix plus one label, from the one list loaded at import;
    None when ``domain`` is itself a public suffix (or the list cannot say).

    No normalisation: callers that must reproduce someone else's view of a domain
    (:mod:`listgate.dmarc` reproducing Mailman) pass the name exactly as they have it.
    """
    try:
        return _PSL.privatesuffix(domain)
    except Exception:  # noqa: BLE001 - a PSL surprise must not take a message down
        return None


def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 section 3.2) of ``domain``, normalised.

    A domain that is itself a public suffix is its own organisational domain; '' for
    something that is not a domain.
    """
    d = normalise_domain(domain)
    if not d:
        return ""
    return private_suffix(d) or d


def aligned(a: str, b: str) -> bool:
    """Relaxed alignment: ``a`` and ``b`` have the same organisational domain."""
    oa, ob = org_domain(a), org_domain(b)
    return bool(oa) and oa == ob


# --------------------------------------------------------------------------- DKIM

#: Default body size kept for DKIM verification.
DEFAULT_BODY_LIMIT = 1 << 20
#: A DKIM-Signature longer than this is not looked at (a real one is well under 2 KiB;
#: dkimpy's b= regexes are quadratic in its length).
MAX_SIGNATURE_HEADER = 4096
#: Signatures listing more header fields in h= are refused (select_headers is O(n*m)).
MAX_SIGNED_HEADERS = 128
#: RSA keys refused above these sizes: verification is pure Python.
MAX_RSA_BITS = 8192
MAX_RSA_EXPONENT_BITS = 64

DKIM_RESULTS = ("pass", "fail", "temperror", "permerror", "neutral")


@dataclass(frozen=True)
class DkimResult:
    domain: str  #: the signature's d=, lowercased ('' if unreadable)
    selector: str  #: the signature's s= ('' if unreadable)
    result: str  #: pass, fail, temperror, permerror or neutral
    reason: str  #: one line of text, for logs and ``listgate check``

    def as_json(self) -> dict[str, str]:
        return {"domain": self.domain, "selector": self.selector, "result": self.result,
                "reason": self.reason}


class BodyCollector:
    """Keeps the first ``limit`` bytes of a message body given in chunks.

    ``truncated`` tells whether more arrived than was kept; ``size`` counts every byte
    seen.  Pass ``truncated_at`` to :func:`verify_dkim`.
    """

    def __init__(self, limit: int = DEFAULT_BODY_LIMIT) -> None:
        if limit < 0:
            raise ValueError("body limit must not be negative")
        self.limit = limit
        self.size = 0
        self.truncated = False
        self._chunks: list[bytes] = []
        self._kept = 0

    def add(self, chunk: bytes) -> None:
        chunk = bytes(chunk)
        self.size += len(chunk)
        room = self.limit - self._kept
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:room]
        if chunk:
            self._chunks.append(chunk)
            self._kept += len(chunk)

    @property
    def data(self) -> bytes:
        """The kept part of the body."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    @property
    def truncated_at(self) -> int | None:
        """The limit if the body was cut off there, else None."""
        return self.limit if self.truncated else None

    def __len__(self) -> int:
        return self._kept


def assemble_message(headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The message as DKIM sees it, from the milter's header callbacks and body.

    Values come as an MTA hands them to a milter (leading space removed, folds as
    ``\\n``, pymilter's surrogateescape decoding): each field is rebuilt as
    ``Name: value`` with CRLF line ends.  Relaxed header canonicalization (what nearly
    every signer uses) is unaffected by the lost original spacing; ``simple`` header
    canonicalization of a field not written ``Name: value`` cannot verify (as with
    every milter that does not negotiate SMFIP_HDR_LEADSPC).
    """
    return header_block(headers) + b"\r\n" + bytes(body)


def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes:
    """dkimpy's key lookup through dnspython's default resolver: the TXT record's strings
    joined, ``b""`` when there is none (NXDOMAIN, no TXT, not a valid name).

    Raises :class:`dkim.DnsTimeoutError` when DNS could not answer (timeout, every server
    failed, no resolver): that is a temperror, not a missing key.
    """
    try:
        qname = name.decode("ascii") if isinstance(name, bytes) else str(name)
    except UnicodeDecodeError:
        return b""
    try:
        answer = dns.resolver.resolve(qname, "TXT", lifetime=timeout, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return b""
    except (dns.exception.Timeout, dns.resolver.NoNameservers,
            dns.resolver.NoResolverConfiguration) as e:
        raise dkim.DnsTimeoutError(f"{type(e).__name__}: {e}") from e
    except dns.exception.DNSException:
        return b""  # e.g. an empty or over-long label: no such key can exist
    for rdata in answer:
        return b"".join(rdata.strings)  # several TXT RRs: undefined (RFC 6376), take one
    return b""


class _KeyFetch:
    """dkimpy ``dnsfunc`` for one signature: applies the time budget, refuses costly
    keys, and remembers what happened so a False from dkimpy can be explained."""

    def __init__(self, lookup: Callable[..., bytes], deadline: float) -> None:
        self.lookup = lookup
        self.deadline = deadline
        self.state = ""  #: "", "temperror", "nokey", "badkey" or "ok"
        self.detail = ""
        self.name = ""

    def _refuse(self, state: str, detail: str, exc: type[Exception]) -> Exception:
        self.state, self.detail = state, detail
        return exc(detail)

    def __call__(self, name: bytes, timeout: float = 5) -> bytes:
        self.name = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self._refuse("temperror", "time limit for DKIM checks reached",
                               dkim.DnsTimeoutError)
        try:
            txt = self.lookup(name, timeout=remaining)
        except dkim.DnsTimeoutError as e:
            raise self._refuse("temperror", f"DNS error for {self.name}: {e}",
                               dkim.DnsTimeoutError) from e
        except Exception as e:  # a lookup failure is a temporary error
            raise self._refuse("temperror", f"DNS error for {self.name}: {type(e).__name__}",
                               dkim.DnsTimeoutError) from e
        if not txt:
            self.state, self.detail = "nokey", f"no key record at {self.name}"
            return b""
        try:
            pk, _keysize, ktag, _tlsrpt = dkim.evaluate_pk(name, txt)
        except dkim.NaClNotFoundError as e:
            raise self._refuse("badkey", "ed25519 keys not supported here (no pynacl)",
                               dkim.KeyFormatError) from e
        except Exception as e:  # any parse failure is a bad key
            raise self._refuse("badkey", f"bad key record at {self.name}: {e}",
                               dkim.KeyFormatError) from e
        if pk is None:
            raise self._refuse("badkey", f"key at {self.name} is not for e-mail",
                               dkim.KeyFormatError)
        if ktag == b"rsa" and (pk["modulus"].bit_length() > MAX_RSA_BITS
                               or pk["publicExponent"].bit_length() > MAX_RSA_EXPONENT_BITS):
            raise self._refuse("badkey", f"RSA key at {self.name} too large to check",
                               dkim.KeyFormatError)
        self.state = "ok"
        return txt


class _DebugAdapter(logging.LoggerAdapter):
    """dkimpy logs every bad signature at ERROR: for a milter that is just debug noise
    (the reason ends up in the result anyway)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


_DKIM_LOG = _DebugAdapter(logging.getLogger("listgate.dkim"), {})
_TAG = {t: re.compile(rb"(?:^|;)\s*" + t + rb"\s*=\s*([^;]*)") for t in (b"d", b"s")}


def _text(value: bytes) -> str:
    return clean(re.sub(rb"\s+", b"", value).decode("utf-8", "replace"), 255)


def _sig_ids(value: bytes) -> tuple[str, str, dict[bytes, bytes] | None, str]:
    """d=, s=, the parsed tags (None if unparsable) and why, for a signature header."""
    try:
        tags = dkim.util.parse_tag_value(value)
    except Exception as e:  # noqa: BLE001 - InvalidTagValueList and whatever else
        found = {t: rx.search(value) for t, rx in _TAG.items()}
        d, s = (_text(m.group(1)) if m else "" for m in (found[b"d"], found[b"s"]))
        return d.lower(), s, None, f"malformed signature: {type(e).__name__}"
    return _text(tags.get(b"d", b"")).lower(), _text(tags.get(b"s", b"")), tags, ""


def _signed_headers(tags: dict[bytes, bytes]) -> list[bytes]:
    return [h.strip().lower() for h in tags.get(b"h", b"").split(b":")]


def _trim_to_lines(message: bytes) -> bytes:
    """A message whose body was cut off, cut back to its last complete body line."""
    sep = re.search(rb"\r?\n\r?\n", message)
    body_start = sep.end() if sep else len(message)
    cut = message.rfind(b"\n") + 1
    return message[:cut] if cut >= body_start else message[:body_start]


_WSP_RUN = re.compile(rb"[\t ]+")


def _relaxed_body(tags: dict[bytes, bytes]) -> bool:
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except Exception:  # noqa: BLE001 - dkimpy will report the bad c= itself
        return False
    return policy.body_algorithm is Relaxed


def _safe_for_relaxed(d: dkim.DKIM) -> dkim.DKIM:
    """A copy of ``d`` whose body has every run of blanks squeezed to one space.

    dkimpy's relaxed body canonicalization strips trailing blanks with
    ``re.sub(b"[\\t ]+\\r\\n", ...)``, which is quadratic in the length of a run of
    blanks that does not end a line: a 1 MiB body of spaces would hold the GIL for
    minutes.  Squeezing runs first does not change the relaxed result (it compresses
    them to one space anyway) and makes every run one byte long.
    """
    quick = copy.copy(d)
    quick.body = _WSP_RUN.sub(b" ", d.body)
    return quick


def _covered(tags: dict[bytes, bytes], body: bytes) -> bool:
    """Whether an l= signature signs no more than the complete lines of ``body``
    (``body`` already squeezed for a relaxed signature)."""
    length = tags.get(b"l", b"").strip()
    if not length.isdigit():
        return False
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
        return int(length) <= len(policy.canonicalize_body(body))
    except Exception:  # noqa: BLE001 - the verification proper will say what is wrong
        return False


def _verify_one(d: dkim.DKIM, idx: int, fetch: _KeyFetch) -> tuple[str, str]:
    try:
        ok = d.verify(idx=idx, dnsfunc=fetch)
    except dkim.ValidationError as e:
        if "body hash mismatch" in str(e):
            return "fail", "body hash mismatch"
        return "permerror", f"invalid signature: {e}"
    except dkim.DKIMException as e:
        return "permerror", f"{type(e).__name__}: {e}"
    except Exception as e:  # dkimpy on hostile input: never escapes
        log.debug("DKIM verification of signature %d raised", idx, exc_info=True)
        return "permerror", f"unverifiable signature ({type(e).__name__})"
    if ok:
        return "pass", "signature verified"
    if fetch.state == "temperror":
        return "temperror", fetch.detail
    if fetch.state in ("nokey", "badkey"):
        return "permerror", fetch.detail
    return "fail", "signature did not verify"


def verify_dkim(
    message: bytes,
    max_signatures: int = 5,
    timeout: float = 5,
    *,
    truncated_at: int | None = None,
    lookup: Callable[..., bytes] = dnsfunc,
) -> list[DkimResult]:
    """Verify the DKIM-Signature header fields of ``message`` (headers + body, CRLF).

    One result per signature, top to bottom, for at most ``max_signatures`` of them.
    ``timeout`` (seconds) bounds all key lookups together.  ``truncated_at``: the body
    in ``message`` was cut at that many bytes (see :class:`BodyCollector`); signatures
    that cover more than the kept body are ``neutral``.  ``lookup(name, timeout=)`` is
    the key lookup (default: :func:`dnsfunc`).  Never raises.
    """
    try:
        return _verify_dkim(message, max_signatures, timeout, truncated_at, lookup)
    except Exception as e:  # noqa: BLE001 - last resort: never let DKIM drop a message
        log.warning("DKIM verification failed: %s: %s", type(e).__name__, e)
        return [DkimResult("", "", "permerror", f"DKIM verification error: {type(e).__name__}")]


def _verify_dkim(message: bytes, max_signatures: int, timeout: float,
                 truncated_at: int | None, lookup: Callable[..., bytes]) -> list[DkimResult]:
    if isinstance(message, str):
        message = message.encode("utf-8", "surrogateescape")
    message = bytes(message)
    if truncated_at is not None:
        message = _trim_to_lines(message)
    deadline = time.monotonic() + max(0.0, float(timeout))
    try:
        d = dkim.DKIM(message, logger=_DKIM_LOG, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - dkimpy's parser refused the message
        # still say something for each signature we can see
        head = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]
        found = re.findall(rb"(?im)^dkim-signature[ \t]*:(.*(?:\r?\n[ \t].*)*)", head)
        why = clean(f"message not parsable for DKIM: {e}", 200)
        return [DkimResult(*_sig_ids(v)[:2], "permerror", why) for v in found[:max_signatures]]
    sigs = [v for name, v in d.headers if name.lower() == b"dkim-signature"]
    squeezed: dkim.DKIM | None = None
    results = []
    for idx, value in enumerate(sigs[: max(0, max_signatures)]):
        domain, selector, tags, why = _sig_ids(value)
        target = d
        if tags is not None and _relaxed_body(tags):
            squeezed = squeezed or _safe_for_relaxed(d)
            target = squeezed
        if tags is None:
            result = "permerror"
        elif len(value) > MAX_SIGNATURE_HEADER:
            result, why = "permerror", f"signature header longer than {MAX_SIGNATURE_HEADER}"
        elif len(signed := _signed_headers(tags)) > MAX_SIGNED_HEADERS:
            result, why = "permerror", f"more than {MAX_SIGNED_HEADERS} signed header fields"
        elif b"h" in tags and b"from" not in signed:
            # RFC 6376 section 6.1.1: such a signature MUST be ignored (PERMFAIL)
            result, why = "permerror", "From header field not signed"
        elif truncated_at is not None and not _covered(tags, target.body):
            result, why = "neutral", f"body larger than {truncated_at} bytes, not verified"
        elif time.monotonic() >= deadline:
            result, why = "temperror", "time limit for DKIM checks reached"
        else:
            result, why = _verify_one(target, idx, _KeyFetch(lookup, deadline))
        results.append(DkimResult(domain, selector, result, clean(why, 200)))
    if len(sigs) > max_signatures:
        log.info("DKIM: checked %d of %d signatures", max(0, max_signatures), len(sigs))
    return results


# --------------------------------------------------------------------------- senders

#: How each of Mailman's sender headers is named in a reason.
ROLE_NAMES = {"from": "From", "from_": "Envelope sender", "reply-to": "Reply-To",
              "sender": "Sender"}


def sender_roles(headers: Mapping[str, Sequence[str]], envelope_sender: str) -> dict[str, str]:
    """address -> where it was first found (``From``, ``Envelope sender``, ``Reply-To``,
    ``Sender``), in Mailman's order, for the addresses :func:`addresses.senders` gives."""
    roles: dict[str, str] = {}
    for h in addresses.SENDER_HEADERS:
        if h == "from_":
            found = addresses.senders({}, envelope_sender)
        else:
            found = addresses.senders({h: headers.get(h, ())}, "")
        for a in found:
            roles.setdefault(a, ROLE_NAMES[h])
    return roles


@dataclass(frozen=True)
class AuthFacts:
    """What is known about a message's authentication, and the rules applied to it."""

    spf: str | None = None  #: SPF result for MAIL FROM; None if no SPF ran for it
    spf_domain: str = ""  #: the envelope sender's domain (what SPF was about)
    envelope_sender: str = ""  #: lowercased
    dkim: tuple[DkimResult, ...] = ()
    internal: bool = False
    trusted_path: bool = False
    _pass_domains: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dkim", tuple(self.dkim))
        object.__setattr__(self, "envelope_sender", (self.envelope_sender or "").lower())
        object.__setattr__(self, "spf", self.spf.lower() if self.spf else None)
        object.__setattr__(self, "_pass_domains",
                           tuple(r.domain for r in self.dkim if r.result == "pass"))

    @classmethod
    def build(
        cls,
        envelope_sender: str,
        spf: SpfResult | str | None,
        dkim: Iterable[DkimResult] = (),
        *,
        internal: bool = False,
        trusted_path: bool = False,
    ) -> AuthFacts:
        """From the milter's facts.  An :class:`SpfResult` for the HELO identity (null
        sender) is no SPF result for MAIL FROM: nothing is authenticated by it."""
        if isinstance(spf, SpfResult):
            spf = spf.result if spf.identity == "mailfrom" else None
        env = (envelope_sender or "").lower()
        return cls(spf=spf or None, spf_domain=addresses.domain_of(env), envelope_sender=env,
                   dkim=tuple(dkim), internal=internal, trusted_path=trusted_path)

    def _why(self, address: str) -> tuple[bool, str]:
        if self.internal:
            return True, "internal connection"
        if self.trusted_path:
            return True, "trusted submission path"
        domain = addresses.domain_of(address)
        spf_pass = self.spf == "pass" and bool(self.spf_domain)
        if spf_pass and address and address == self.envelope_sender:
            return True, "SPF pass for the envelope sender"
        if spf_pass and aligned(domain, self.spf_domain):
            return True, f"aligned with SPF-pass envelope domain {self.spf_domain}"
        for d in self._pass_domains:
            if aligned(domain, d):
                return True, f"aligned with DKIM d={d}"
        if self.spf is None:
            spf = "no SPF result"
        elif spf_pass:
            spf = f"SPF pass for unaligned {self.spf_domain}"
        else:
            spf = f"SPF {self.spf}"
        return False, f"{spf}, no aligned DKIM"

    def authenticated(self, address: str, role: str | None = None) -> tuple[bool, str]:
        """Whether ``address`` counts as authenticated, and a one-line reason naming it
        (``From member@x.org not authenticated: SPF softfail, no aligned DKIM``).

        ``role`` names where the address came from (:func:`sender_roles`); by default
        ``Envelope sender`` for the envelope sender, else ``Address``.
        """
        address = (address or "").lower()
        if role is None:
            role = ("Envelope sender" if address and address == self.envelope_sender
                    else "Address")
        ok, why = self._why(address)
        verdict = "authenticated" if ok else "not authenticated"
        return ok, clean(f"{role} {address} {verdict}: {why}", 300)

    def as_json(self) -> dict[str, Any]:
        """For ``listgate check``'s ``"auth"``."""
        return {
            "spf": None if self.spf is None else {"result": self.spf, "domain": self.spf_domain},
            "dkim": [r.as_json() for r in self.dkim],
            "internal": self.internal,
            "trusted_path": self.trusted_path,
        }


def authenticated_senders(
    senders: Iterable[str],
    envelope_sender: str,
    spf: SpfResult | str | None,
    *,
    internal: bool = False,
    trusted_path: bool = False,
    dkim: Iterable[DkimResult] = (),
    roles: Mapping[str, str] | None = None,
) -> dict[str, tuple[bool, str]]:
    """address -> (authenticated, reason) for each sender (lowercased, first occurrence
    order kept).  ``roles`` (see :func:`sender_roles`) names each address's header."""
    facts = AuthFacts.build(envelope_sender, spf, dkim, internal=internal,
                            trusted_path=trusted_path)
    roles = roles or {}
    out: dict[str, tuple[bool, str]] = {}
    for a in addresses.unique(s.lower() for s in senders):
        out[a] = facts.authenticated(a, roles.get(a))
    return out


# --------------------------------------------------------------------------- AR header

_DOMAIN_TOKEN = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*"
                           r"[a-z0-9_])?)*\.?", re.IGNORECASE)
_REASON_UNSAFE = re.compile(r"[^A-Za-z0-9 ._,:/()+-]")  # no "=": "x=pass" fools greps
#: RFC 8601 result words listgate may write for each method.
_SPF_RESULTS = {"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"}


def _pvalue(value: str) -> str | None:
    """A domain-like property value, or None: anything else would need quoting that
    authres does not do reliably (it never quotes a value containing ``@``)."""
    v = normalise_domain(value)
    return v if v and _DOMAIN_TOKEN.fullmatch(v) else None


def _reason(text: str) -> str:
    return _REASON_UNSAFE.sub("?", clean(text, 80))


def authentication_results(
    authserv_id: str,
    spf: tuple[str, str] | None,
    dkim: Sequence[DkimResult],
    *,
    spf_identity: str = "mailfrom",
) -> str:
    """An Authentication-Results header VALUE (RFC 8601), one line, e.g.
    ``mx.example.net; spf=pass smtp.mailfrom=x.org; dkim=pass header.d=x.org header.s=s``.

    ``spf`` is (result, identity value): the MAIL FROM address or domain (only the
    domain is written) or, with ``spf_identity="helo"``, the HELO name.  Nothing checked
    gives ``mx.example.net; none``.  Values that are not plain domain names are left
    out rather than risk a forged clause.
    """
    if spf is not None and "@" in (spf[1] or ""):
        spf = (spf[0], addresses.domain_of(spf[1]))  # the same header for every sender
    return _authentication_results(authserv_id, spf, tuple(dkim), spf_identity)


@functools.lru_cache(maxsize=1024)
def _authentication_results(authserv_id: str, spf: tuple[str, str] | None,
                            dkim: tuple[DkimResult, ...], spf_identity: str) -> str:
    """:func:`authentication_results`, remembered: a pure function of its arguments, and
    building the header through authres was the largest single cost at end of message
    once SPF and the list lookups are cached (the same domains post again and again)."""
    sid = header_value(authserv_id).strip()
    if not sid or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+", sid):
        raise ValueError(f"authserv-id {authserv_id!r} is not a token")
    results: list[Any] = []
    if spf is not None:
        result, value = spf
        result = (result or "").strip().lower()
        if result not in _SPF_RESULTS:
            result = "permerror"
        value = addresses.domain_of(value) if "@" in (value or "") else (value or "")
        pv = _pvalue(value)
        if spf_identity == "helo":
            results.append(authres.SPFAuthenticationResult(result=result, smtp_helo=pv))
        else:
            results.append(authres.SPFAuthenticationResult(result=result, smtp_mailfrom=pv))
    for r in dkim:
        result = r.result if r.result in DKIM_RESULTS else "permerror"
        reason = _reason(r.reason) if result != "pass" and r.reason else None
        results.append(authres.DKIMAuthenticationResult(
            result=result, reason=reason, header_d=_pvalue(r.domain),
            header_s=_pvalue(r.selector)))
    hdr = authres.AuthenticationResultsHeader(authserv_id=sid, results=results)
    return header_value(hdr.header_value())


#: Longest header value handed to authres's parser (its parse is quadratic in length).
_MAX_PARSE = 4096
_COMMENT = re.compile(r"\([^()]*\)")


def _first_token(value: str) -> str:
    """The authserv-id the way a lenient reader would see it: comments removed, the
    first word before ``;``, quotes stripped."""
    text = value
    for _ in range(20):
        text, n = _COMMENT.subn(" ", text)
        if not n:
            break
    words = text.split(";", 1)[0].split()
    return words[0].strip('"').replace("\\", "") if words else ""


def _same_id(a: str, b: str) -> bool:
    na, nb = a.strip().rstrip(".").lower(), b.strip().rstrip(".").lower()
    return bool(na) and na == nb


def claims_authserv_id(header_value: str, authserv_id: str) -> bool:
    """Whether an incoming Authentication-Results header claims our ``authserv_id``
    (RFC 8601 section 5: such a field is a forgery and must go).

    The id is compared case-insensitively (and without trailing dots).  The header is
    read with authres and, failing that, as its first token before ``;``; if EITHER
    reading gives our id the header counts as ours: keeping a forgery is worse than
    dropping a header nobody downstream should trust.
    """
    if not authserv_id or not authserv_id.strip():
        return False
    if isinstance(header_value, bytes):
        header_value = header_value.decode("utf-8", "surrogateescape")
    text = re.sub(r"[\r\n]+", " ", str(header_value or "")).strip()
    if not text:
        return False
    if len(text) <= _MAX_PARSE:
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(text)
            if _same_id(parsed.authserv_id or "", authserv_id):
                return True
        except Exception:  # noqa: BLE001 - authres.SyntaxError and its friends
            pass
    return _same_id(_first_token(text), authserv_id)


__all__ = [
    "DEFAULT_BODY_LIMIT",
    "AuthFacts",
    "BodyCollector",
    "DkimResult",
    "aligned",
    "assemble_message",
    "authenticated_senders",
    "authentication_results",
    "claims_authserv_id",
    "dnsfunc",
    "normalise_domain",
    "org_domain",
    "private_suffix",
    "sender_roles",
    "verify_dkim",
]
