package join

import (
	"reflect"
	"testing"
	"time"
)

func TestCopyEscapes(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`n1`, "n1"},
		{`a\tb\\c\nd`, "a\tb\\c\nd"},
		{`x\101\x42`, "xAB"},
		{`\b\f\r\v`, "\b\f\r\v"},
	} {
		got, err := unescapeCopy([]byte(tc.in))
		if err != nil || got != tc.want {
			t.Errorf("unescapeCopy(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if back, _ := unescapeCopy([]byte(escapeCopy(tc.want))); back != tc.want {
			t.Errorf("escapeCopy(%q) does not read back: %q", tc.want, back)
		}
	}
	if _, err := unescapeCopy([]byte(`bad\`)); err == nil {
		t.Error("a trailing backslash is not an error")
	}
}

func TestChunkerRuns(t *testing.T) {
	c := &chunker{tc: &tableCopy{}, cur: &chunk{}}
	rows := "n1\t2026-01-01 00:00:00+00\t1\ta\n" +
		"n1\t2026-01-01 00:00:00+00\t2\tb\n" +
		"\\N\t\\N\t3\tc\n" +
		"n2\t2026-01-01 00:00:01+00\t4\t\\N\n"
	// Split inside rows: the chunker must not care.
	for _, part := range []string{rows[:5], rows[5:40], rows[40:]} {
		if _, err := c.Write([]byte(part)); err != nil {
			t.Fatal(err)
		}
	}
	runs := splitRuns(c.cur.rows)
	want := []runKey{{"pgmesh_n1", "2026-01-01 00:00:00+00"}, {UnknownOrigin, "-infinity"}, {"pgmesh_n2", "2026-01-01 00:00:01+00"}}
	var got []runKey
	for _, r := range runs {
		got = append(got, r.key)
	}
	if !reflect.DeepEqual(got, want) || runs[0].n != 2 {
		t.Fatalf("runs %+v", runs)
	}
	data := c.cur.data.String()
	if d := data[runs[0].from:runs[0].to]; d != "1\ta\n2\tb\n" {
		t.Errorf("run 0 data %q", d)
	}
	if d := data[runs[2].from:runs[2].to]; d != "4\t\\N\n" {
		t.Errorf("run 2 data %q", d)
	}
	if c.tc.rows.Load() != 4 {
		t.Errorf("%d rows counted", c.tc.rows.Load())
	}
	if _, err := (&chunker{tc: &tableCopy{}, cur: &chunk{}}).Write([]byte("no tabs\n")); err == nil {
		t.Error("a row without origin and time is not an error")
	}
}

func TestSchemaEntry(t *testing.T) {
	for line, want := range map[string]string{
		"3; 2615 2200 SCHEMA - public pg_database_owner":      "public",
		"3345; 0 0 COMMENT - SCHEMA public pg_database_owner": "public",
		"3346; 0 0 ACL - SCHEMA app owner":                    "app",
		"215; 1259 16386 TABLE public t postgres":             "",
		"; Archive created at 2026-01-01":                     "",
		"216; 1259 16390 SEQUENCE public schema_seq postgres": "",
		"3347; 0 0 COMMENT public TABLE t postgres":           "",
	} {
		got, ok := schemaEntry(line)
		if got != want || ok != (want != "") {
			t.Errorf("schemaEntry(%q) = %q, %v; want %q", line, got, ok, want)
		}
	}
}

func TestMergeSeen(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rows := map[string]time.Time{"n1": t0.Add(5 * time.Second), "n2": t0, "gone": t0}
	peer := map[string]map[string]time.Time{
		"n1": {"n2": t0.Add(time.Second), "n3": t0.Add(2 * time.Second), "n1": t0.Add(time.Hour)},
		"n2": {"n3": t0.Add(time.Hour)}, // another peer's claim says nothing of the source
	}
	got := mergeSeen(rows, peer, "n1", []string{"n1", "n2", "n3", "n4"})
	want := map[string]time.Time{"n1": t0.Add(5 * time.Second), "n2": t0.Add(time.Second), "n3": t0.Add(2 * time.Second)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mergeSeen = %v, want %v", got, want)
	}
}
