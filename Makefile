# Sluice: `make demo` and `make test` are the whole quick start (see README.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-postgres postgres-leg bench lint check sandbox-tools mail-tools db-tools clean

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "Sluice needs Python 3.11 ($(PYTHON) not found). Set PYTHON=/path/to/python3.11."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

# The strongest sandbox isolation needs bubblewrap; install it when we can (root with apt), else say so.
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing bubblewrap for the sandbox..."; \
	    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1)) \
	      || echo "Could not install bubblewrap; the sandbox falls back to weaker isolation (see 'sluice doctor')."; \
	  else echo "bubblewrap (bwrap) is not installed; the sandbox uses weaker isolation (see 'sluice doctor')."; fi; }

# The IMAP tests run a real Dovecot; install it when we can (root with apt), else they skip and say so.
mail-tools:
	@command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing dovecot-imapd for the IMAP tests..."; \
	    (apt-get install -y -qq dovecot-imapd >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dovecot-imapd >/dev/null 2>&1)) \
	      || echo "Could not install dovecot-imapd; the IMAP tests will be skipped."; \
	  else echo "dovecot is not installed; the IMAP tests will be skipped (install dovecot-imapd)."; fi; }

# The journal is also tested on a real PostgreSQL (a throwaway cluster, tests/_postgres.py);
# install it when we can (root with apt), else that part of `make test` is skipped and says so.
db-tools:
	@command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing postgresql for the Postgres tests..."; \
	    (apt-get install -y -qq postgresql >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1)) \
	      || echo "Could not install postgresql; the Postgres tests will be skipped."; \
	  else echo "PostgreSQL is not installed; the Postgres tests will be skipped (install postgresql)."; fi; }

demo: $(STAMP) sandbox-tools
	$(BIN)/sluice up --demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The tests where the database matters most, run again on PostgreSQL; `make test-postgres` runs
# the whole suite there.
POSTGRES_TESTS := tests/test_journal.py tests/test_runtime.py tests/test_resume_replay.py \
	tests/test_sql.py tests/test_spine.py tests/test_outbox.py

test: $(STAMP) sandbox-tools mail-tools db-tools lint
	$(BIN)/pytest -q
	@$(MAKE) --no-print-directory postgres-leg TESTS="$(POSTGRES_TESTS)"

test-postgres: $(STAMP) sandbox-tools mail-tools db-tools
	@$(MAKE) --no-print-directory postgres-leg TESTS=

postgres-leg:
	@if why=$$($(BIN)/python -c "from tests._postgres import available; print(available() or '')") && [ -z "$$why" ]; then \
	  echo "The same tests on PostgreSQL (a throwaway cluster):"; \
	  SLUICE_TEST_POSTGRES=start $(BIN)/pytest -q $(TESTS); \
	else echo "Skipping the PostgreSQL tests: $$why"; fi

# Benchmarks (not part of `make test`): results in tests/bench/results.json. BENCH_ARGS=--full
# runs each() over 100,000 items; BENCH_ARGS="--only sandbox" runs one.
bench: $(STAMP) sandbox-tools
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .sluice .pytest_cache .mypy_cache
