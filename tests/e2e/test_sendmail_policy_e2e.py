"""The refusals of test_policy_e2e.py (HELO of ours, internal domains both ways, a
hold configured to tempfail) through a real sendmail instead of Postfix: the same
scenarios, imported, with sendmail as ``mta_factory`` (see test_sendmail_e2e.py).
Its PTR test speaks the milter protocol itself (no MTA), so it runs there only."""

from __future__ import annotations

import pytest
from test_policy_e2e import (  # noqa: F401 - the module's daemon and its scenarios
    daemon,
    test_external_client_forging_an_internal_domain,
    test_helo_of_ours_is_refused,
    test_internal_client_sending_as_a_foreign_domain,
    test_nonmember_hold_configured_to_tempfail,
)


@pytest.fixture(scope="module")
def mta_factory(sendmail_factory):
    """The scenarios' MTA is sendmail here (conftest's is Postfix)."""
    return sendmail_factory
