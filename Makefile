# The two commands a newcomer needs: `make demo` and `make test`. Both work from a fresh clone:
# they create .venv, install what is missing (pip; Kafka jars via mvn; clickhouse-server via
# apt-get when run as root) and start the local stack with `oms stack up`.

PYTHON ?= python3
# rustup installs cargo here; the native Avro codec is built with it when present.
export PATH := $(HOME)/.cargo/bin:$(PATH)
VENV := .venv
OMS := $(VENV)/bin/oms
STAMP := $(VENV)/.installed-stamp
# Two pytest workers (pytest-xdist): the integration tests mostly wait on Kafka and ClickHouse,
# each on topics and a database of its own, so two halve the wall time on two cores (a full
# run: about 15 minutes instead of 25). The 25 slowest are listed at the end.
# Long fault schedules (marker `chaos`: the 20,000-order worker group on 3 brokers, ~5 min
# alone) run in `make chaos`.
PYTEST_ARGS ?= -n 2 --durations=25 -m "not chaos"

.PHONY: demo test chaos fuzz lint typecheck pytest system-deps browser-deps label-deps cluster-deps stack-up stack-down clean

NATIVE_SRC := native/avro_codec/Cargo.toml native/avro_codec/Cargo.lock $(shell find native/avro_codec/src -name "*.rs")

$(STAMP): pyproject.toml $(NATIVE_SRC)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (found " + sys.version.split()[0] + ")")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	@# The native Avro codec (Rust, built by maturin) is optional: without cargo the
	@# compiled-Python codec is used, at about a quarter of the speed.
	if command -v cargo >/dev/null; then \
	  $(VENV)/bin/pip install --quiet ./native/avro_codec; \
	else \
	  echo "cargo not found: using the pure-Python Avro codec (install Rust for the native one)"; \
	fi
	touch $(STAMP)

# Java + Maven run Kafka; clickhouse-server is optional (embedded chDB otherwise) but CI uses it.
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	if [ "$${OMS_SKIP_CLICKHOUSE_SERVER:-0}" != 1 ]; then \
	  command -v clickhouse-server >/dev/null || missing="$$missing clickhouse-server clickhouse-client"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "not installed:$$missing (install them, or use: docker compose -f docker-compose.kafka.yml up -d)"; \
	  fi; \
	fi

# Shipping labels: a CJK font to embed (fonts-wqy-microhei), and to read the labels back in
# the tests, pdftoppm (poppler-utils) and zbarimg (zbar-tools).
label-deps:
	@missing=""; \
	test -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc || missing="$$missing fonts-wqy-microhei"; \
	command -v pdftoppm >/dev/null || missing="$$missing poppler-utils"; \
	command -v zbarimg >/dev/null || missing="$$missing zbar-tools"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "not installed:$$missing (the label tests need them)"; \
	  fi; \
	fi

# The replicated-ClickHouse tests (and `oms stack cluster up`) run Debian's ZooKeeper 3.8 with
# java on a zoo.cfg of their own (never the system service): clickhouse-server 18.16 has no
# clickhouse-keeper.
cluster-deps:
	@if [ ! -e /usr/share/java/zookeeper.jar ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing: zookeeper"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; \
	  else \
	    echo "not installed: zookeeper (the replicated-ClickHouse tests need it)"; \
	  fi; \
	fi

# The dashboard's browser test drives Debian's chromium headless (make test only).
browser-deps:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing: chromium"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "not installed: chromium (the dashboard's browser test needs it)"; \
	  fi; \
	fi

demo: $(STAMP) system-deps
	$(OMS) demo

# Runs lint, types and every test; stops the stack afterwards if this run started it.
test: $(STAMP) system-deps browser-deps label-deps cluster-deps
	@was_up=0; $(OMS) stack status >/dev/null 2>&1 && was_up=1; \
	$(OMS) stack up || exit 1; \
	status=0; \
	echo "== ruff"; $(VENV)/bin/ruff check . || status=1; \
	echo "== ruff format"; $(VENV)/bin/ruff format --check . || status=1; \
	echo "== mypy"; $(VENV)/bin/mypy || status=1; \
	echo "== schemas"; $(OMS) schemas check || status=1; \
	echo "== pytest"; $(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; status=1; \
	elif [ $$rc -ne 0 ]; then status=1; fi; \
	if [ $$was_up = 0 ]; then $(OMS) stack down; fi; \
	exit $$status

# The reservation protocol's model test with 20,000 random runs (docs/reservations.md), then
# long randomized fault runs (docs/faults.md), each against a private broker and ClickHouse on
# free ports: random seeds, random faults about every 12 s. A failure prints its seed and the
# command that replays it. The Kafka jars are the local stack's (.oms/kafka/libs, fetched here
# if missing); the shared stack itself is not needed.
CHAOS_ARGS ?= --runs 3 --duration 120
chaos: $(STAMP) system-deps
	OMS_PROTOCOL_EXAMPLES=20000 $(VENV)/bin/pytest -q -o timeout=3600 tests/streams/test_reservation_protocol.py
	$(VENV)/bin/pytest -q -s -m chaos -o timeout=3600 tests
	$(VENV)/bin/python -c 'from infra.settings import Settings; from oms.stack import KafkaService; KafkaService(Settings()).ensure_installed()'
	$(VENV)/bin/python -m tests.faults $(CHAOS_ARGS)

# Fuzzing at length: the same fuzz tests `make test` runs with fixed seeds and a few hundred
# examples each (marker `fuzz`), here with random seeds and OMS_FUZZ_EXAMPLES examples each,
# against the local stack. A failure prints the example and the seed that replays it.
OMS_FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP) system-deps
	@was_up=0; $(OMS) stack status >/dev/null 2>&1 && was_up=1; \
	$(OMS) stack up || exit 1; \
	OMS_FUZZ_EXAMPLES=$(OMS_FUZZ_EXAMPLES) OMS_FUZZ_RANDOM=1 $(VENV)/bin/pytest -q -m fuzz -o timeout=7200 tests; rc=$$?; \
	if [ $$was_up = 0 ]; then $(OMS) stack down; fi; \
	exit $$rc

stack-up: $(STAMP) system-deps
	$(OMS) stack up

stack-down: $(STAMP)
	$(OMS) stack down

clean: stack-down
	rm -rf .oms $(VENV)
