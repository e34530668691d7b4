package eval

import (
	"context"
	"io"
	"os"
	"testing"
)

// TestBenchApply runs `pgmesh bench apply` small: both appliers catch up
// the same backlog. The native subscription connects from the subscriber's
// server process, which must get in without the sandbox's password file.
// The speeds are not checked (no timing in tests), only that both ran.
func TestBenchApply(t *testing.T) {
	res, err := BenchApply(context.Background(), ApplyBenchOptions{BinDir: os.Getenv("PGMESH_PG_BIN"), Txns: 400, Rounds: 1, Out: io.Discard})
	if err != nil {
		t.Fatalf("bench apply: %v", err)
	}
	if res.NativeMedian <= 0 || res.PgmeshMedian <= 0 || len(res.Rounds) != 2 {
		t.Errorf("bench apply: %+v, want one round of each applier", res)
	}
}
