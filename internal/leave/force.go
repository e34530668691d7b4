package leave

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/apply"
	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/stream"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// seenMargin widens what is taken as newer than a survivor's claim: commit
// times of one node are not strictly monotone in commit order (they are
// taken before the commit record is written). A row the survivor has
// already is written again as the same change, which changes nothing.
const seenMargin = time.Second

// catchUpFromSurvivors brings every survivor to what the most advanced one
// holds of the node's changes, when the node itself is gone.
func (r *remover) catchUpFromSurvivors(ctx context.Context) error {
	progress := map[string]pglogrepl.LSN{}
	best := ""
	for _, s := range r.survivors {
		lsn, ok, err := origin.LinkProgress(ctx, r.conns[s.Name], r.node.Name, r.cfg.NodeNames(), false)
		if err != nil {
			return fmt.Errorf("node %s: %w", s.Name, err)
		}
		if ok {
			progress[s.Name] = lsn
			if best == "" || lsn > progress[best] {
				best = s.Name
			}
		}
	}
	if best == "" {
		r.rep.Unverified = append(r.rep.Unverified, fmt.Sprintf("no survivor had applied anything of %s: whatever it wrote is lost with it", r.node.Name))
		return nil
	}
	r.rep.Source = best
	r.rep.Unverified = append(r.rep.Unverified,
		fmt.Sprintf("changes %s committed after %s (the most any survivor, %s, had applied) reached no survivor: they are lost with it", r.node.Name, progress[best], best))
	r.printf("%s is the most advanced survivor for %s (applied up to %s)", best, r.node.Name, progress[best])
	for _, s := range r.survivors {
		if s.Name == best || progress[s.Name] == progress[best] {
			continue
		}
		n, err := r.replay(ctx, best, s.Name, progress[best])
		if err != nil {
			return fmt.Errorf("catch %s up from %s: %w", s.Name, best, err)
		}
		r.rep.CaughtUp[s.Name] = n
		r.printf("  %s: %d rows and deletes of %s applied from %s", s.Name, n, r.node.Name, best)
	}
	return nil
}

// replay applies to survivor dst the rows and deletes of the node that src
// holds and dst may not: those newer than what dst claims to have seen of
// the node. Each is applied as the node's own change (its commit time and
// origin) by the apply engine, so conflicts resolve, and are logged, as the
// link would have done it; dst's origin for the node ends at src's.
func (r *remover) replay(ctx context.Context, src, dst string, to pglogrepl.LSN) (int, error) {
	from, into := r.conns[src], r.conns[dst]
	var since time.Time
	err := into.QueryRow(ctx, `SELECT coalesce(max(seen_until), '-infinity') FROM pgmesh.peer_seen WHERE peer = $1 AND origin = $2`,
		dst, r.node.Name).Scan(&since)
	if err != nil {
		return 0, fmt.Errorf("node %s: read what it has seen of %s: %w", dst, r.node.Name, err)
	}
	if !since.IsZero() {
		since = since.Add(-seenMargin)
	}
	tables, err := pg.ReplicatedTables(ctx, into, r.cfg.Replicate.Schemas, r.cfg.Replicate.Exclude)
	if err != nil {
		return 0, fmt.Errorf("node %s: %w", dst, err)
	}
	// The changes, grouped by commit time: one transaction each.
	type change struct {
		ts time.Time
		c  *stream.Change
	}
	var changes []change
	for i, t := range tables {
		lt, err := conflict.LoadTable(ctx, into, t.Schema, t.Name, r.cfg)
		if err != nil {
			return 0, fmt.Errorf("node %s: %w", dst, err)
		}
		if len(lt.Key) == 0 || len(lt.DeltaColumns) > 0 {
			r.rep.Unverified = append(r.rep.Unverified, fmt.Sprintf("%s on %s: %s's changes cannot be rebuilt from rows (%s); compare with pgmesh diff",
				t.QualifiedName(), dst, r.node.Name, map[bool]string{true: "no key", false: "delta columns"}[len(lt.Key) == 0]))
			continue
		}
		rel := &stream.Relation{ID: uint32(i + 1), Schema: t.Schema, Name: t.Name, ReplicaIdentity: 'd'}
		var cols string
		for k, c := range lt.Columns {
			rel.Columns = append(rel.Columns, stream.Column{Name: c, Key: contains(lt.Key, c)})
			if k > 0 {
				cols += ", "
			}
			cols += "t." + pg.Ident(c) + "::text"
		}
		q := fmt.Sprintf(`SELECT c."timestamp", %s FROM %s t CROSS JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) c
 WHERE c."timestamp" > $2 AND pgmesh.origin_node(c.roident) = $1`, cols, t.Ident())
		rows, err := from.Query(ctx, q, r.node.Name, since)
		if err != nil {
			return 0, fmt.Errorf("node %s: read %s's rows of %s: %w", src, r.node.Name, t.QualifiedName(), err)
		}
		for rows.Next() {
			vals := make([]*string, len(lt.Columns))
			dest := []any{new(time.Time)}
			for k := range vals {
				dest = append(dest, &vals[k])
			}
			if err := rows.Scan(dest...); err != nil {
				rows.Close()
				return 0, fmt.Errorf("node %s: read %s: %w", src, t.QualifiedName(), err)
			}
			tup := make(stream.Tuple, len(vals))
			for k, v := range vals {
				tup[k] = text(v)
			}
			op := stream.Insert
			if has, err := r.exists(ctx, into, lt, tup); err != nil {
				rows.Close()
				return 0, fmt.Errorf("node %s: %w", dst, err)
			} else if has {
				op = stream.Update
			}
			changes = append(changes, change{ts: *dest[0].(*time.Time), c: &stream.Change{Op: op, Rel: rel, New: tup}})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, fmt.Errorf("node %s: read %s: %w", src, t.QualifiedName(), err)
		}
		// Deletes of the node that src applied: its tombstones.
		var keyCols string
		for k, c := range lt.Key {
			if k > 0 {
				keyCols += ", "
			}
			keyCols += "z.key ->> " + pg.QuoteLiteral(c)
		}
		trows, err := from.Query(ctx, fmt.Sprintf(`SELECT pgmesh.tombstone_time(z.deleted_at, z.xid), %s FROM pgmesh.tombstone z
 WHERE z.table_name = $1 AND z.node = $2 AND pgmesh.tombstone_time(z.deleted_at, z.xid) > $3`, keyCols),
			t.QualifiedName(), r.node.Name, since)
		if err != nil {
			return 0, fmt.Errorf("node %s: read %s's deletes of %s: %w", src, r.node.Name, t.QualifiedName(), err)
		}
		for trows.Next() {
			vals := make([]*string, len(lt.Key))
			dest := []any{new(time.Time)}
			for k := range vals {
				dest = append(dest, &vals[k])
			}
			if err := trows.Scan(dest...); err != nil {
				trows.Close()
				return 0, fmt.Errorf("node %s: read tombstones: %w", src, err)
			}
			old := make(stream.Tuple, len(lt.Columns))
			for k, c := range lt.Columns {
				old[k] = stream.Value{Kind: stream.Null}
				if i := index(lt.Key, c); i >= 0 {
					old[k] = text(vals[i])
				}
			}
			changes = append(changes, change{ts: *dest[0].(*time.Time), c: &stream.Change{Op: stream.Delete, Rel: rel, Old: old, OldIsKey: true}})
		}
		trows.Close()
		if err := trows.Err(); err != nil {
			return 0, fmt.Errorf("node %s: read tombstones: %w", src, err)
		}
	}
	if len(changes) == 0 {
		return 0, nil
	}
	sortByTime(changes, func(c change) time.Time { return c.ts })

	conn, err := pg.ConnectExact(ctx, dst, r.nodeDSN(dst), "pgmesh node remove "+r.node.Name+": catch up")
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var a *apply.Applier
	for attempt := 0; ; attempt++ {
		// An agent may still try the node's link now and then (it cannot
		// reach the node) and hold the origin for a moment.
		a, err = apply.New(ctx, []apply.Session{{Conn: conn.PgConn(), Origin: topology.OriginName(r.node.Name)}}, apply.Options{Upstream: r.node.Name,
			Config: r.cfg, Node: dst, Claim: true, Logger: r.o.Log})
		if err == nil || attempt == 20 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		return 0, fmt.Errorf("node %s: %w", dst, err)
	}
	defer a.Close(context.WithoutCancel(ctx))
	for i := 0; i < len(changes); {
		ts := changes[i].ts
		if err := a.Begin(ctx, stream.Begin{FinalLSN: to, CommitTime: ts}); err != nil {
			return 0, err
		}
		for ; i < len(changes) && changes[i].ts.Equal(ts); i++ {
			if err := a.Change(ctx, changes[i].c); err != nil {
				return 0, err
			}
		}
		if err := a.Commit(ctx, stream.Commit{CommitLSN: to, EndLSN: to, CommitTime: ts}); err != nil {
			return 0, err
		}
	}
	if err := a.Wait(ctx); err != nil {
		return 0, err
	}
	return len(changes), nil
}

// exists tells whether dst holds the key of tup (a row in lt's columns).
func (r *remover) exists(ctx context.Context, conn *pgx.Conn, lt conflict.Table, tup stream.Tuple) (bool, error) {
	var where string
	var args []any
	for k, c := range lt.Key {
		if k > 0 {
			where += " AND "
		}
		i := index(lt.Columns, c)
		args = append(args, string(tup[i].Data))
		where += fmt.Sprintf("%s = $%d::text::%s", pg.Ident(c), len(args), lt.Types[i])
	}
	var has bool
	err := conn.QueryRow(ctx, fmt.Sprintf("SELECT EXISTS (SELECT FROM %s WHERE %s)", pg.Ident(lt.Schema, lt.Name), where), args...).Scan(&has)
	if err != nil {
		return false, fmt.Errorf("look up a key of %s: %w", lt.QualifiedName(), err)
	}
	return has, nil
}

func (r *remover) nodeDSN(name string) string {
	n, _ := r.cfg.NodeByName(name)
	return n.DSN
}

// sortByTime orders xs by time, stably.
func sortByTime[T any](xs []T, at func(T) time.Time) {
	slices.SortStableFunc(xs, func(a, b T) int { return at(a).Compare(at(b)) })
}

func text(v *string) stream.Value {
	if v == nil {
		return stream.Value{Kind: stream.Null}
	}
	return stream.Value{Kind: stream.Text, Data: []byte(*v)}
}

func contains(s []string, x string) bool { return index(s, x) >= 0 }

func index(s []string, x string) int {
	for i, v := range s {
		if v == x {
			return i
		}
	}
	return -1
}
