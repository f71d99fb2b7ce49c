# listgate: `make run` and `make test` do all the set-up on a fresh Debian machine
# (as root: they install Debian packages).  See README.md.

PYTHON ?= python3
VENV   ?= .venv
CONFIG ?= etc/listgate.cfg
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run test lint unit e2e venv clean package man

# The virtualenv, with listgate installed editable plus its test tools; redone when
# pyproject.toml changes.
$(STAMP): pyproject.toml
	scripts/install-debian-deps.sh run
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

# Start listgate in the foreground on the example config (the embedded SQLite
# backend; socket and database in the config's default places).  Ctrl-C stops it.
run: $(STAMP)
	scripts/install-debian-deps.sh run
	mkdir -p /run/listgate /var/lib/listgate
	$(VENV)/bin/listgate -c $(CONFIG) db init
	exec $(VENV)/bin/listgate -c $(CONFIG) serve

# The whole suite: lint, unit, protocol and end-to-end tests (real Postfix, dnsmasq,
# a real Mailman 3 in a venv of its own, and Debian's sendmail unpacked privately).
test: $(STAMP)
	scripts/install-debian-deps.sh test
	scripts/install-mailman3.sh
	scripts/install-sendmail.sh
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

e2e: $(STAMP)
	scripts/install-debian-deps.sh test
	scripts/install-mailman3.sh
	scripts/install-sendmail.sh
	$(PY) -m pytest -q tests/e2e

# The manual pages listgate(8) and listgate.cfg(5), regenerated from the --help texts
# and etc/listgate.cfg (tests/unit/test_manpages.py fails while they differ).
man: $(STAMP)
	$(PY) -m listgate.manpage man

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# The Debian package, for Debian's own python3: build/deb/listgate_VERSION_all.deb
# (plus .buildinfo/.changes).  See packaging/debian and README.md, "Installing".
# No venv and no network: Debian's build tools only (the package test builds it
# under `unshare --net`).
package:
	scripts/install-debian-deps.sh package
	scripts/build-deb.sh

# Performance benchmark (issue 5): through a private Postfix (no milter, a minimal
# pymilter milter, pyspf-milter, listgate on SQLite and on Mailman 3; unix and inet
# sockets), the milter protocol alone, data scale and a 100k-message growth run.
# Prints the tables and writes bench/results.json; about 13 minutes.  See bench/run.py.
.PHONY: bench
bench: $(STAMP)
	scripts/install-debian-deps.sh test
	scripts/install-mailman3.sh
	scripts/install-bench-peers.sh
	$(PY) bench/run.py
