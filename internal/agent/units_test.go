package agent

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/human"
)

func TestRefused(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Severity: "ERROR", Code: "23514"}, true},                        // check constraint
		{&pgconn.PgError{Severity: "ERROR", Code: "42P01"}, true},                        // missing table
		{&pgconn.PgError{Severity: "ERROR", Code: "P0001"}, true},                        // trigger RAISE
		{fmt.Errorf("ddl: %w", &pgconn.PgError{Severity: "ERROR", Code: "42P07"}), true}, // failed DDL, wrapped
		{&pgconn.PgError{Severity: "ERROR", Code: "40P01"}, false},                       // deadlock
		{&pgconn.PgError{Severity: "ERROR", Code: "40001"}, false},                       // serialization failure
		{&pgconn.PgError{Severity: "ERROR", Code: "57014"}, false},                       // canceled
		{&pgconn.PgError{Severity: "FATAL", Code: "57P01"}, false},                       // server shutting down
		{&pgconn.PgError{Severity: "ERROR", Code: "55P03"}, false},                       // lock not available
		{errors.New("unexpected EOF"), false},
	}
	for _, c := range cases {
		if got := refused(c.err); got != c.want {
			t.Errorf("refused(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestHealth(t *testing.T) {
	cases := []struct {
		state                                  string
		mine, blocked, unreachable, slotActive bool
		lag                                    int64
		want                                   string
	}{
		{StateStreaming, true, false, false, true, 0, HealthStreaming},
		{StateStreaming, true, false, false, true, IdleLagBytes + 1, HealthCatchingUp},
		{StateRetrying, true, true, false, false, 0, HealthBlocked},
		{StateRetrying, true, true, true, false, 0, HealthUnreachable},
		{StateStreaming, true, false, true, true, 0, HealthUnreachable},
		{StateRetrying, true, false, false, false, 0, HealthRetrying},
		{StateConnecting, true, false, false, false, 0, HealthConnecting},
		{StateStopped, true, false, true, false, 0, HealthStopped},
		{StateStreaming, false, false, false, false, 0, HealthNoAgent}, // its agent died: nobody reads the slot
		{StateStreaming, false, false, false, true, 0, HealthStreaming},
		{StateNoAgent, false, false, false, false, 0, HealthNoAgent},
		{StateWaiting, true, false, false, false, IdleLagBytes + 1, HealthWaiting}, // a node copies: not catching up
	}
	for _, c := range cases {
		if got := health(c.state, c.mine, c.blocked, c.unreachable, c.slotActive, c.lag); got != c.want {
			t.Errorf("health(%+v) = %s, want %s", c, got, c.want)
		}
	}
}

func TestHumanUnits(t *testing.T) {
	cases := []struct{ got, want string }{
		{humanSeconds(0), "0 ms"},
		{humanSeconds(0.0123), "12 ms"},
		{humanSeconds(3.21), "3.2 s"},
		{humanSeconds(150), "2.5 min"},
		{humanSeconds(7200), "2.0 h"},
		{human.Bytes(512), "512 B"},
		{human.Bytes(3277), "3.2 KiB"},
		{human.Bytes(5 << 30), "5.0 GiB"},
		{signedMillis(-0.0121), "-12.1 ms"},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	for _, c := range []struct{ v, want float64 }{{0, 1}, {0.03, 0.05}, {7, 10}, {45, 50}, {100, 120}, {1000, 1200}} {
		if got := niceSeconds(c.v); got != c.want {
			t.Errorf("niceSeconds(%v) = %v, want %v", c.v, got, c.want)
		}
	}
}
