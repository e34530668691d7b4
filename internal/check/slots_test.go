package check

import (
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/topology"
)

func TestSlotFinding(t *testing.T) {
	r := &run{cfg: &config.Config{Path: "pgmesh.yaml"}, opts: Options{MaxSlotWAL: 1 << 20}}
	link := topology.Link{Up: "n1", Down: "n2"}
	ok := slotState{Exists: true, Database: "shop", Plugin: "pgoutput", Active: true, WALStatus: "reserved", Retained: 4096}
	with := func(change func(s *slotState)) slotState {
		s := ok
		change(&s)
		return s
	}
	tests := []struct {
		name        string
		initialised bool
		s           slotState
		want        Status
		msg         string   // substring of the message
		fix         []string // substrings of the fix
	}{
		{"active", true, ok, Pass, "active, retains 4 kB", nil},
		{"missing before init", false, slotState{}, Warn, "init has not run on n1", []string{"pgmesh init -c pgmesh.yaml"}},
		{"missing after init", true, slotState{}, Fail, "missing although init has run on n1: n2 receives nothing",
			[]string{"on n1: SELECT pg_create_logical_replication_slot('pgmesh_n1_n2', 'pgoutput');", "resync n2", "pgmesh repair -c pgmesh.yaml --table TABLE --from n1"}},
		{"inactive", true, with(func(s *slotState) { s.Active = false }), Warn, "inactive: no agent is reading it",
			[]string{"start the agent of n2: pgmesh run"}},
		{"inactive above the threshold", true, with(func(s *slotState) { s.Active, s.Retained = false, 3<<20 }), Warn,
			"retains 3 MB of WAL, above the threshold of 1 MB", []string{"pgmesh run"}},
		{"lost", true, with(func(s *slotState) { s.Active, s.WALStatus = false, "lost" }), Fail, "wal_status = lost",
			[]string{"stop the agent of n2", "SELECT pg_drop_replication_slot('pgmesh_n1_n2'); SELECT pg_create_logical_replication_slot('pgmesh_n1_n2', 'pgoutput');", "resync n2", "--from n1"}},
		{"unreserved", true, with(func(s *slotState) { s.WALStatus = "unreserved" }), Warn, "lost at the next checkpoint",
			[]string{"max_slot_wal_keep_size"}},
		{"too much WAL", true, with(func(s *slotState) { s.Retained = 2 << 30 }), Warn, "retains 2 GB of WAL (threshold 1 MB): n2 is falling behind",
			[]string{"pgmesh status"}},
		{"other database", true, with(func(s *slotState) { s.Database = "other" }), Fail, `belongs to database "other"`, nil},
		{"physical", true, with(func(s *slotState) { s.Database, s.Plugin = "", "" }), Fail, "is a physical slot", []string{"pg_create_logical_replication_slot"}},
		{"other plugin", true, with(func(s *slotState) { s.Plugin = "test_decoding" }), Fail, "pgmesh needs pgoutput", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := slotFinding(r, "n1", "shop", tt.initialised, link, tt.s)
			if f.Status != tt.want || !strings.Contains(f.Message, tt.msg) || f.Node != "n1" || !strings.Contains(f.Object, "pgmesh_n1_n2") {
				t.Fatalf("got %+v, want %s with %q", f, tt.want, tt.msg)
			}
			if (f.Status == Pass) != (f.Fix == "") {
				t.Fatalf("fix %q for %s", f.Fix, f.Status)
			}
			for _, sub := range tt.fix {
				if !strings.Contains(f.Fix, sub) {
					t.Errorf("fix lacks %q:\n%s", sub, f.Fix)
				}
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "512": 512, "512B": 512, "64kB": 64 << 10, "64KB": 64 << 10, "1MB": 1 << 20,
		"1GB": 1 << 30, " 10 GB ": 10 << 30, "2TB": 2 << 40, "3GiB": 3 << 30,
	}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "1.5GB", "-1", "1PB", "9999999999TB"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
	for b, want := range map[int64]string{512: "512 B", 4096: "4 kB", 1536: "1.5 kB", 3 << 20: "3 MB", 15 << 30: "15 GB"} {
		if got := FormatSize(b); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", b, got, want)
		}
	}
}
