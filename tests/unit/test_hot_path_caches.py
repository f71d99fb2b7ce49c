"""What the hot path remembers gives the very answers it would compute afresh.

The per-post work that repeats from post to post (To/Cc parsing, address validation,
the header-match links of a list) is remembered; these tests pin that a remembered
answer is the one the uncached code gives, on plain and awkward input alike, and that
the chain gives the rest of the chain only to the links that declare they read it.
"""

from __future__ import annotations

import email.utils
from email.header import Header

import pytest

from listgate import addresses, compat32
from listgate.chain import MAILMAN2_PIPELINE, MAILMAN3_CHAIN, Link, walk
from listgate.model import ListFacts, ListPolicy, SenderFacts, SiteFacts
from listgate.post import Post
from listgate.rules import Context

VALUES = [
    [],
    ["dev@lists.test"],
    ["Dev List <dev@lists.test>, other@x.org"],
    ['"unclosed <a@b.c>', "c@d.e"],  # a quote that spills into the next value
    ["a@b.c", "", "(comment only)"],
    ["x" * 3000 + "@long.test"],  # too long to be remembered
]


@pytest.mark.parametrize("values", VALUES)
def test_remembered_getaddresses_is_the_stdlibs(values: list[str]) -> None:
    want = tuple(email.utils.getaddresses(values))
    assert compat32.getaddresses(values) == want
    assert compat32.getaddresses(list(values)) == want  # and again, from the cache


def test_getaddresses_of_a_header_object_is_not_remembered_but_the_same() -> None:
    values = [Header("caf\udce9 <a@b.c>", charset="unknown-8bit")]
    assert compat32.getaddresses(values) == tuple(email.utils.getaddresses(values))


@pytest.mark.parametrize("address", ["a@b.c", "A@B.C", "a b@c.d", "a@-b.c", "a@b", "",
                                     "a@b..c", "x" * 400 + "@long.test", "é@b.c"])
def test_remembered_is_valid_is_the_validators(address: str) -> None:
    assert addresses.is_valid(address) == addresses._is_valid(address)
    assert addresses.is_valid(address) == addresses._is_valid(address)


def test_post_reads_each_header_lazily_with_the_same_values() -> None:
    post = Post([("From", "a@b.c"), ("To", "dev@lists.test"), ("to", "x@y.z"),
                 ("Received", "from a\n\tby b")], "a@b.c")
    assert "TO" in post and "cc" not in post
    assert post.get_all("To") == ["dev@lists.test", "x@y.z"]
    assert post.get_all("cc") == [] and post.get("cc", "none") == "none"
    assert post.get("received") == "from a\r\n\tby b"
    assert post.unique_senders() == ("a@b.c",)


def _facts(**policy: object) -> ListFacts:
    return ListFacts(ListPolicy("dev@lists.test", **policy),
                     (SenderFacts("m@x.org", is_member=True),), SiteFacts())


def test_only_the_approve_links_read_the_rest_of_the_chain() -> None:
    assert [lk.rule for lk in MAILMAN3_CHAIN if lk.reads_rest] == ["approved"]
    assert [lk.rule for lk in MAILMAN2_PIPELINE if lk.reads_rest] == ["approve"]


def test_a_rule_reading_the_rest_without_saying_so_is_undecided_not_wrong() -> None:
    def peeks(inp):  # a rule that forgot reads_rest
        return inp.rest()

    links = (Link("peeks", peeks, accepts=True), *MAILMAN3_CHAIN)
    post = Post([("From", "m@x.org"), ("To", "dev@lists.test"), ("Subject", "s")], "m@x.org")
    v = walk(links, post, _facts(), Context())
    assert (v.action, v.undecided, v.rule) == ("accept", True, "peeks")


def test_header_match_links_are_shared_between_posts_of_a_list() -> None:
    from listgate.chain import header_match_links
    from listgate.rules import Input

    post = Post([("From", "m@x.org")], "m@x.org")
    a = header_match_links(Input(post, _facts(), Context()))
    b = header_match_links(Input(post, _facts(), Context()))
    assert a == b and a is not b  # the same links, in a list of its own per walk


def test_header_match_links_of_settings_that_cannot_be_a_cache_key() -> None:
    from listgate.chain import header_match_links
    from listgate.model import HeaderMatch
    from listgate.rules import Input

    odd = HeaderMatch("x-spam", "yes", action=["hold"])  # type: ignore[arg-type]
    post = Post([("From", "m@x.org")], "m@x.org")
    links = header_match_links(Input(post, _facts(header_matches=(odd,)), Context()))
    assert [lk.rule for lk in links] == ["any", "header-match-dev.lists.test-0"]
