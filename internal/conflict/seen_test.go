package conflict

import (
	"strings"
	"testing"
	"time"
)

func TestSeenMessageRoundTrip(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.FixedZone("x", 3600))
	m := SeenMessage{Node: "n2", Seen: map[string]time.Time{"n1": ts, "n3": ts.Add(time.Second)}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"node":"n2","seen":{"n1":"2026-01-02T02:04:05.123456Z","n3":"2026-01-02T02:04:06.123456Z"}}`; string(b) != want {
		t.Errorf("Marshal = %s, want %s", b, want)
	}
	got, err := ParseSeenMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Node != "n2" || !got.Seen["n1"].Equal(ts) || len(got.Seen) != 2 {
		t.Errorf("Parse = %+v", got)
	}
	p := got.Params()
	if len(p) != 2 || p[0] != [3]string{"n2", "n1", "2026-01-02T02:04:05.123456Z"} || p[1][1] != "n3" {
		t.Errorf("Params = %v", p)
	}
}

func TestParseSeenMessageRejects(t *testing.T) {
	for _, in := range []string{
		``,
		`null`,
		`[]`,
		`{"node":"n2"} x`,
		`{"node":"N2","seen":{}}`,
		`{"node":"","seen":{}}`,
		`{"node":"n2","seen":{"n1":"yesterday"}}`,
		`{"node":"n2","seen":{"n1":null}}`,
		`{"node":"n2","seen":{"bad name":"2026-01-02T02:04:05Z"}}`,
		`{"node":"n2","seen":{"n1":"2026-01-02T02:04:05Z"},"extra":1}`,
		`{"node":"n2","seen":{"n1":"0001-01-01T00:00:00Z"}}`,
		"\xff\xfe",
	} {
		if m, err := ParseSeenMessage([]byte(in)); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", in, m)
		}
	}
	if _, err := (SeenMessage{Node: "Bad"}).Marshal(); err == nil {
		t.Error("Marshal of a bad node name: no error")
	}
}

func FuzzParseSeenMessage(f *testing.F) {
	f.Add([]byte(`{"node":"n2","seen":{"n1":"2026-01-02T02:04:05.123456Z"}}`))
	f.Add([]byte(`{"node":"n2","seen":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseSeenMessage(b)
		if err != nil {
			return
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("parsed %q but cannot marshal it: %v", b, err)
		}
		if _, err := ParseSeenMessage(out); err != nil {
			t.Fatalf("round trip of %q: %v", b, err)
		}
	})
}

func TestValidate(t *testing.T) {
	base := Table{Schema: "public", Name: "t", Columns: []string{"id", "v"}, Types: []string{"integer", "integer"}, Key: []string{"id"}}
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mod  func(*Table)
		want string
	}{
		{func(t *Table) { t.Types = t.Types[:1] }, "one type per column"},
		{func(t *Table) { t.Key = []string{"nope"} }, "key column nope"},
		{func(t *Table) { t.Policy = "newest" }, "unknown conflict policy"},
		{func(t *Table) { t.DeltaColumns = []string{"v"} }, "REPLICA IDENTITY FULL"},
		{func(t *Table) { t.FullIdentity = true; t.DeltaColumns = []string{"id"} }, "part of the key"},
		{func(t *Table) { t.Columns = []string{"id", "id"} }, "listed twice"},
	} {
		tb := base
		tb.Columns = append([]string(nil), base.Columns...)
		tb.Types = append([]string(nil), base.Types...)
		tc.mod(&tb)
		if err := tb.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate = %v, want an error containing %q", err, tc.want)
		}
	}
}

// The statements are fixed text per (table, operation, column set): no
// value ever enters the SQL, so they can be prepared once.
func TestStatementsAreParameterized(t *testing.T) {
	tb := Table{Schema: "public", Name: "it's", Columns: []string{"id", "na\"me"}, Types: []string{"integer", "text"}, Key: []string{"id"}}
	for _, sql := range []string{InsertSQL(tb), UpdateSQL(tb, tb.Columns), DeleteSQL(tb)} {
		if !strings.Contains(sql, `"public"."it's"`) || !strings.Contains(sql, `'public.it''s'`) {
			t.Errorf("table not quoted:\n%s", sql)
		}
		if strings.Contains(sql, "$7") {
			t.Errorf("more parameters than the convention:\n%s", sql)
		}
	}
	if !strings.Contains(UpdateSQL(tb, tb.Columns), `"na""me" = $6::text`) {
		t.Error("update does not set the new value from $6")
	}
}
