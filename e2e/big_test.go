package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// TestHugeTransaction replicates one transaction of 1,000,000 rows and
// checks that the agent's peak resident memory stays under 200 MiB: the
// apply path must stream a transaction, never hold it.
func TestHugeTransaction(t *testing.T) {
	env := sandboxtest.New(t, 2)
	initMesh(t, env, 2, `CREATE TABLE big (id int PRIMARY KEY, payload text NOT NULL)`)
	agent := startAgent(t, env.ConfigPath, "--node", "n2")

	const rows = 1_000_000
	env.Exec(t, 0, fmt.Sprintf(`INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, %d) g`, rows))
	down := env.Conn(t, 1)
	eventually(t, 8*time.Minute, "1M-row transaction applied on n2", func() (bool, string) {
		var n int
		if err := down.QueryRow(context.Background(), `SELECT count(*) FROM big`).Scan(&n); err != nil {
			return false, err.Error()
		}
		return n == rows, fmt.Sprintf("%d rows", n)
	})
	// One transaction: the rows appear all at once or not at all.
	peak := peakRSS(t, agent.cmd.Process.Pid)
	t.Logf("agent peak RSS while applying %d rows in one transaction: %.1f MiB", rows, float64(peak)/(1<<20))
	fmt.Fprintf(os.Stderr, "MEASURE huge_txn_peak_rss_mib=%.1f\n", float64(peak)/(1<<20))
	if peak >= 200<<20 {
		t.Fatalf("agent peak RSS %d MiB, want < 200 MiB", peak>>20)
	}
	var a, b string
	if err := env.Conn(t, 0).QueryRow(context.Background(), `SELECT md5(string_agg(payload, '' ORDER BY id)) FROM big`).Scan(&a); err != nil {
		t.Fatal(err)
	}
	if err := down.QueryRow(context.Background(), `SELECT md5(string_agg(payload, '' ORDER BY id)) FROM big`).Scan(&b); err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatal("payloads differ between n1 and n2")
	}
}

// peakRSS reads VmHWM (peak resident set) of a live process, in bytes.
func peakRSS(t testing.TB, pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read agent memory: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("parse VmHWM %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}

// TestToastUnchanged updates another column of a row that holds a 1 MB
// text value: pgoutput sends the big value as "unchanged", and every node
// must keep it.
func TestToastUnchanged(t *testing.T) {
	env := sandboxtest.New(t, 3)
	initMesh(t, env, 3, `CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL, version int NOT NULL)`)
	startAgent(t, env.ConfigPath)
	// Random-ish text compresses poorly, so it is stored out of line.
	env.Exec(t, 0, `INSERT INTO docs SELECT 1, string_agg(md5(g::text), '') , 1 FROM generate_series(1, 32768) g`)
	cs := conns(t, env, 3)
	waitConverged(t, env, cs, "docs", "id")
	env.Exec(t, 1, `UPDATE docs SET version = 2 WHERE id = 1`)
	eventually(t, 60*time.Second, "version 2 everywhere", func() (bool, string) {
		for i, c := range cs {
			var v, l int
			if err := c.QueryRow(context.Background(), `SELECT version, length(body) FROM docs WHERE id = 1`).Scan(&v, &l); err != nil {
				return false, err.Error()
			}
			if l != 32768*32 {
				t.Fatalf("n%d: body has %d bytes, want %d: the unchanged TOAST value was lost", i+1, l, 32768*32)
			}
			if v != 2 {
				return false, fmt.Sprintf("n%d version %d", i+1, v)
			}
		}
		return true, ""
	})
	waitConverged(t, env, cs, "docs", "id")
}
