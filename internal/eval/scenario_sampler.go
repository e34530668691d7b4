package eval

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/agent"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/netfault"
)

// Lag is measured the way pt-heartbeat does: every node writes its own row
// of eval.heartbeat (replicated like any table) every heartbeatPeriod; a
// downstream that shows an older heartbeat of upstream U than U itself
// holds is behind, by the age of the first heartbeat it has not applied.
// Unlike byte counts, this is the delay a reader on the downstream sees,
// proxies and apply included.
const (
	heartbeatPeriod = 100 * time.Millisecond
	samplePeriod    = 250 * time.Millisecond
	walEvery        = 4 // read slot WAL (pgmesh status) every walEvery samples
)

// LagSample is the lag of one link at one moment.
type LagSample struct {
	T     float64 `json:"t"` // seconds since the start of the run
	Link  string  `json:"link"`
	LagMS float64 `json:"lag_ms"`
}

// WALSample is the WAL a link's slot retains on its upstream.
type WALSample struct {
	T     float64 `json:"t"`
	Link  string  `json:"link"`
	Bytes int64   `json:"bytes"`
}

// heartbeats writes every node's heartbeat until stop is closed.
func heartbeats(ctx context.Context, nodes []config.Node, stop <-chan struct{}) {
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.WithoutCancel(ctx))
				}
			}()
			tick := time.NewTicker(heartbeatPeriod)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if conn == nil || conn.IsClosed() {
					c, err := pgx.Connect(ctx, n.DSN)
					if err != nil {
						continue // the node is down: no heartbeat, which the lag shows
					}
					conn = c
				}
				if _, err := conn.Exec(ctx, `INSERT INTO eval.heartbeat (node, at) VALUES ($1, clock_timestamp())
ON CONFLICT (node) DO UPDATE SET at = excluded.at`, n.Name); err != nil {
					conn.Close(context.WithoutCancel(ctx))
					conn = nil
				}
			}
		})
	}
	wg.Wait()
}

// sampler measures the lag of every link and the WAL of every slot.
type sampler struct {
	cfg   *config.Config
	start time.Time

	mu      sync.Mutex
	lag     []LagSample
	wal     []WALSample
	walPeak int64
	// mark is a moment (a heal); reachedAt is when every node first held a
	// heartbeat of every other node written at or after it: each link
	// applies in commit order, so everything written before mark had
	// reached every node by then.
	mark, reachedAt time.Time
}

// setMark starts watching for the moment everything written before t has
// reached every node (see reached).
func (s *sampler) setMark(t time.Time) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mark, s.reachedAt = t, time.Time{}
}

// reached is when the last mark was reached; zero if not (yet).
func (s *sampler) reached() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reachedAt
}

// view is what one node shows at one moment: its clock and the heartbeats
// it holds.
type view struct {
	now   time.Time
	beats map[string]time.Time
}

// run samples until ctx is done.
func (s *sampler) run(ctx context.Context) {
	conns := make([]*pgx.Conn, len(s.cfg.Nodes))
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	tick := time.NewTicker(samplePeriod)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		views := make([]*view, len(s.cfg.Nodes))
		var wg sync.WaitGroup
		for j, n := range s.cfg.Nodes {
			wg.Go(func() { views[j] = readView(ctx, &conns[j], n) })
		}
		wg.Wait()
		s.recordLag(views)
		if i%walEvery == 0 {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			sts, err := agent.Status(sctx, s.cfg)
			cancel()
			if err == nil {
				s.recordWAL(sts)
			}
		}
	}
}

func readView(ctx context.Context, conn **pgx.Conn, n config.Node) *view {
	if *conn == nil || (*conn).IsClosed() {
		c, err := pgx.Connect(ctx, n.DSN)
		if err != nil {
			return nil
		}
		*conn = c
	}
	v := &view{beats: map[string]time.Time{}}
	rows, err := (*conn).Query(ctx, `SELECT clock_timestamp(), node, at FROM eval.heartbeat`)
	if err != nil {
		(*conn).Close(context.WithoutCancel(ctx))
		*conn = nil
		return nil
	}
	defer rows.Close()
	v.now = time.Now()
	for rows.Next() {
		var node string
		var at time.Time
		if err := rows.Scan(&v.now, &node, &at); err != nil {
			return nil
		}
		v.beats[node] = at
	}
	if rows.Err() != nil {
		return nil
	}
	return v
}

func (s *sampler) recordLag(views []*view) {
	t := time.Since(s.start).Seconds()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mark.IsZero() && s.reachedAt.IsZero() && reachedAll(s.cfg, views, s.mark) {
		s.reachedAt = time.Now()
	}
	for i, up := range s.cfg.Nodes {
		for j, down := range s.cfg.Nodes {
			if i == j || views[i] == nil || views[j] == nil {
				continue
			}
			own, ok1 := views[i].beats[up.Name]
			seen, ok2 := views[j].beats[up.Name]
			if !ok1 || !ok2 {
				continue
			}
			lag := 0.0
			if seen.Before(own) {
				// The first heartbeat not applied yet was written about one
				// period after the last one applied.
				lag = max(0, views[j].now.Sub(seen.Add(heartbeatPeriod)).Seconds()*1000)
			}
			s.lag = append(s.lag, LagSample{T: t, Link: netfault.LinkName(up.Name, down.Name), LagMS: lag})
		}
	}
}

// reachedAll reports whether every node holds a heartbeat of every other
// node written at or after mark.
func reachedAll(cfg *config.Config, views []*view, mark time.Time) bool {
	for j, down := range cfg.Nodes {
		if views[j] == nil {
			return false
		}
		for _, up := range cfg.Nodes {
			if up.Name == down.Name {
				continue
			}
			if at, ok := views[j].beats[up.Name]; !ok || at.Before(mark) {
				return false
			}
		}
	}
	return true
}

func (s *sampler) recordWAL(sts []agent.LinkStatus) {
	t := time.Since(s.start).Seconds()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range sts {
		if st.Problem != "" {
			continue
		}
		s.wal = append(s.wal, WALSample{T: t, Link: netfault.LinkName(st.Upstream, st.Downstream), Bytes: st.RetainedWALBytes})
		s.walPeak = max(s.walPeak, st.RetainedWALBytes)
	}
}

func (s *sampler) results() ([]LagSample, []WALSample, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]LagSample(nil), s.lag...), append([]WALSample(nil), s.wal...), s.walPeak
}
