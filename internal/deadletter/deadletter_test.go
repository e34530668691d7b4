package deadletter

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// recorder is a stream.Handler that writes down what reaches it.
type recorder struct{ got []string }

func (r *recorder) Begin(_ context.Context, b stream.Begin) error {
	r.got = append(r.got, "begin "+b.FinalLSN.String())
	return nil
}
func (r *recorder) Change(_ context.Context, c *stream.Change) error {
	r.got = append(r.got, fmt.Sprintf("change %c", c.Op))
	return nil
}
func (r *recorder) Message(_ context.Context, m stream.Message) error {
	r.got = append(r.got, "message "+m.Prefix)
	return nil
}
func (r *recorder) Commit(_ context.Context, c stream.Commit) error {
	r.got = append(r.got, "commit "+c.CommitLSN.String())
	return nil
}
func (r *recorder) Idle(context.Context) error { return nil }

var items = &stream.Relation{Schema: "public", Name: "items", ReplicaIdentity: 'd',
	Columns: []stream.Column{{Name: "id", TypeOID: 23, Key: true}, {Name: "v", TypeOID: 25}, {Name: "doc", TypeOID: 25}}}

func text(s string) stream.Value { return stream.Value{Kind: stream.Text, Data: []byte(s)} }

// changes covers every shape a transaction can carry: NULLs, an unchanged
// TOAST value, a key-only old image, a full old image, a truncate.
var changes = []*stream.Change{
	{Op: stream.Insert, Rel: items, New: stream.Tuple{text("1"), text("a"), {Kind: stream.Null}}},
	{Op: stream.Update, Rel: items, New: stream.Tuple{text("1"), text("b"), {Kind: stream.Unchanged}}},
	{Op: stream.Update, Rel: items, Old: stream.Tuple{text("1"), {Kind: stream.Null}, {Kind: stream.Null}}, OldIsKey: true,
		New: stream.Tuple{text("2"), text(""), text("{}")}},
	{Op: stream.Delete, Rel: items, Old: stream.Tuple{text("2"), {Kind: stream.Null}, {Kind: stream.Null}}, OldIsKey: true},
	{Op: stream.Truncate, TruncateRels: []*stream.Relation{items}, RestartIdentity: true},
}

func TestDivert(t *testing.T) {
	ctx := context.Background()
	txn := func(h stream.Handler, lsn stream.LSN) {
		t.Helper()
		at := time.Date(2026, 12, 3, 10, 0, 0, 123456000, time.UTC)
		steps := []error{h.Begin(ctx, stream.Begin{XID: 7, FinalLSN: lsn, CommitTime: at})}
		for _, c := range changes {
			steps = append(steps, h.Change(ctx, c))
		}
		steps = append(steps,
			h.Message(ctx, stream.Message{Transactional: true, LSN: lsn - 1, Prefix: conflict.SeenPrefix}),
			h.Message(ctx, stream.Message{Transactional: true, LSN: lsn - 1, Prefix: "pgmesh.ddl", Content: []byte(`{"sql":"x"}`)}),
			h.Commit(ctx, stream.Commit{CommitLSN: lsn, EndLSN: lsn + 8, CommitTime: at}))
		for _, err := range steps {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	whole := []string{"begin 0/200", "change I", "change U", "change U", "change D", "change T",
		"message pgmesh.seen", "message pgmesh.ddl", "commit 0/200"}
	for _, c := range []struct {
		name string
		skip stream.LSN
		want []string
	}{
		{"no order", 0, whole},
		{"another transaction", 0x100, whole},
		{"this transaction", 0x200, []string{"begin 0/200", "message pgmesh.seen", "message " + Prefix, "commit 0/200"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{}
			h := Divert(r, c.skip)
			txn(h, 0x200)
			if !reflect.DeepEqual(r.got, c.want) {
				t.Errorf("handler got %q, want %q", r.got, c.want)
			}
			// The next transaction is never diverted.
			r.got = nil
			txn(h, 0x300)
			if want := whole; len(r.got) != len(want) {
				t.Errorf("next transaction: handler got %q", r.got)
			}
		})
	}
}

// TestLetterRoundTrip: what Store keeps gives the changes back as the
// stream delivered them, which is what a replay applies.
func TestLetterRoundTrip(t *testing.T) {
	for i, c := range changes {
		stored, err := json.Marshal(changeOf(c))
		if err != nil {
			t.Fatal(err)
		}
		var back Change
		if err := json.Unmarshal(stored, &back); err != nil {
			t.Fatal(err)
		}
		got, err := back.streamChange()
		if err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("change %d: stored as %s, read back as %+v, want %+v", i, stored, got, c)
		}
	}
}
