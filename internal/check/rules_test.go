package check

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

func TestVersionFinding(t *testing.T) {
	tests := []struct {
		num        int
		version    string
		want       Status
		wantInText string
	}{
		{140011, "14.11", Fail, "needs 15 or newer"},
		{150004, "15.4", Pass, "PostgreSQL 15.4"},
		{180000, "18.0", Pass, "PostgreSQL 18.0"},
	}
	for _, tt := range tests {
		f := versionFinding("n1", tt.num, tt.version)
		if f.Status != tt.want || !strings.Contains(f.Message, tt.wantInText) {
			t.Errorf("version %d: got %s %q, want %s containing %q", tt.num, f.Status, f.Message, tt.want, tt.wantInText)
		}
	}
}

func TestSettingFindings(t *testing.T) {
	good := map[string]Setting{
		"wal_level": {Value: "logical"}, "track_commit_timestamp": {Value: "on"}, "max_slot_wal_keep_size": {Value: "10240"},
	}
	with := func(name string, s Setting) map[string]Setting {
		m := map[string]Setting{}
		for k, v := range good {
			m[k] = v
		}
		m[name] = s
		return m
	}
	tests := []struct {
		name     string
		settings map[string]Setting
		check    string
		want     Status
		fix      string // substring of Fix, "" = no fix
	}{
		{"wal_level ok", good, "wal_level", Pass, ""},
		{"wal_level replica", with("wal_level", Setting{Value: "replica"}), "wal_level", Fail, "ALTER SYSTEM SET wal_level = logical; then restart"},
		{"wal_level changed, not restarted", with("wal_level", Setting{Value: "replica", PendingRestart: true}), "wal_level", Fail, "restart the server"},
		{"commit timestamps off", with("track_commit_timestamp", Setting{Value: "off"}), "track_commit_timestamp", Fail, "ALTER SYSTEM SET track_commit_timestamp = on"},
		{"commit timestamps ok", good, "track_commit_timestamp", Pass, ""},
		{"unlimited wal retention", with("max_slot_wal_keep_size", Setting{Value: "-1"}), "wal_retention", Warn, "ALTER SYSTEM SET max_slot_wal_keep_size"},
		{"bounded wal retention", good, "wal_retention", Pass, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := find(t, settingFindings("n1", tt.settings), tt.check)
			if f.Status != tt.want {
				t.Fatalf("status = %s, want %s (%+v)", f.Status, tt.want, f)
			}
			if (tt.fix == "") != (f.Fix == "") || !strings.Contains(f.Fix, tt.fix) {
				t.Fatalf("fix = %q, want %q", f.Fix, tt.fix)
			}
			if f.Node != "n1" {
				t.Fatalf("node = %q", f.Node)
			}
		})
	}
}

func TestCapacityFindings(t *testing.T) {
	settings := func(slots, senders, origins string) map[string]Setting {
		return map[string]Setting{
			"max_replication_slots": {Value: slots}, "max_wal_senders": {Value: senders},
			"max_active_replication_origins": {Value: origins},
		}
	}
	tests := []struct {
		name     string
		version  int
		settings map[string]Setting
		u        usage
		check    string
		want     Status
		object   string
	}{
		{"slots plenty", 150000, settings("10", "10", "0"), usage{outbound: 2, inbound: 2}, "replication_slots", Pass, "max_replication_slots"},
		{"slots exactly enough: no headroom", 150000, settings("3", "10", "0"), usage{outbound: 2, inbound: 2, otherSlots: 1}, "replication_slots", Warn, "max_replication_slots"},
		{"slots short", 150000, settings("2", "10", "0"), usage{outbound: 2, inbound: 2, otherSlots: 1}, "replication_slots", Fail, "max_replication_slots"},
		{"senders short", 150000, settings("10", "1", "0"), usage{outbound: 2, inbound: 2}, "wal_senders", Fail, "max_wal_senders"},
		{"pg15 origins bounded by slots", 150000, settings("3", "10", "0"), usage{outbound: 0, inbound: 4}, "replication_origins", Fail, "max_replication_slots"},
		{"pg18 origins have their own setting", 180000, settings("10", "10", "1"), usage{outbound: 2, inbound: 2}, "replication_origins", Fail, "max_active_replication_origins"},
		{"pg18 origins ok", 180000, settings("10", "10", "10"), usage{outbound: 2, inbound: 2}, "replication_origins", Pass, "max_active_replication_origins"},
		{"unreadable setting", 180000, settings("10", "10", ""), usage{outbound: 2, inbound: 2}, "replication_origins", Fail, "max_active_replication_origins"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := find(t, capacityFindings("n2", tt.version, tt.settings, tt.u), tt.check)
			if f.Status != tt.want || f.Object != tt.object {
				t.Fatalf("got %s on %s, want %s on %s (%+v)", f.Status, f.Object, tt.want, tt.object, f)
			}
			// Every shortage comes with the ALTER SYSTEM that fixes it.
			if (f.Status == Pass || tt.name == "unreadable setting") != (f.Fix == "") {
				t.Fatalf("fix %q for status %s", f.Fix, f.Status)
			}
		})
	}
}

func TestPresenceFindings(t *testing.T) {
	tbl := func(names ...string) []pg.Table {
		var ts []pg.Table
		for _, n := range names {
			s, name, _ := strings.Cut(n, ".")
			ts = append(ts, pg.Table{Schema: s, Name: name})
		}
		return ts
	}
	cfg := &config.Config{Path: "pgmesh.yaml"}
	nodes := []*Node{
		{Name: "n1", Tables: tbl("public.a", "public.b")},
		{Name: "n2", Tables: tbl("public.a")},
		{Name: "n3", Tables: tbl("public.a", "public.c")},
	}
	fs := presenceFindings(cfg, nodes)
	var got []string
	for _, f := range fs {
		if f.Status != Fail {
			t.Fatalf("unexpected %+v", f)
		}
		got = append(got, f.Node+":"+f.Object+":"+f.Message)
	}
	want := []string{
		"n2:public.b:table missing here; present on n1",
		"n3:public.b:table missing here; present on n1",
		"n1:public.c:table missing here; present on n3",
		"n2:public.c:table missing here; present on n3",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	same := presenceFindings(cfg, nodes[:1:1])
	if len(same) != 0 {
		t.Fatalf("one node: %+v", same)
	}
	nodes[1].Tables = tbl("public.a", "public.b")
	ok := presenceFindings(cfg, nodes[:2])
	if len(ok) != 1 || ok[0].Status != Pass {
		t.Fatalf("identical nodes: %+v", ok)
	}
}

func TestRender(t *testing.T) {
	fs := []Finding{
		{Status: Pass, Node: "n1", Check: "wal_level", Object: "wal_level", Message: "wal_level = logical"},
		{Status: Fail, Node: "n2", Check: "identity", Object: "public.t", Message: "no usable\nreplica identity", Fix: "ALTER TABLE public.t ADD PRIMARY KEY (id);"},
		{Status: Warn, Check: "tables", Message: "cluster-wide"},
	}
	var b bytes.Buffer
	Render(&b, fs)
	out := b.String()
	for _, want := range []string{
		"STATUS  NODE  CHECK      OBJECT     MESSAGE\n",
		"FAIL    n2    identity   public.t   no usable replica identity\n",
		"WARN    -     tables     -          cluster-wide\n",
		"FIX FAIL n2 identity public.t:\n    ALTER TABLE public.t ADD PRIMARY KEY (id);\n",
		"1 FAIL, 1 WARN, 1 PASS\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !Failed(fs) || Failed(fs[:1]) {
		t.Errorf("Failed wrong")
	}
}

func find(t *testing.T, fs []Finding, check string) Finding {
	t.Helper()
	for _, f := range fs {
		if f.Check == check {
			return f
		}
	}
	t.Fatalf("no %s finding in %+v", check, fs)
	return Finding{}
}
