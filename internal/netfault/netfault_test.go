package netfault

import (
	"bufio"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoServer echoes every line back until the client closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	return ln.Addr().String()
}

func newNet(t *testing.T) *Net {
	t.Helper()
	n := New()
	t.Cleanup(func() { n.Close() })
	return n
}

// roundTrip sends a line through c and reads it back.
func roundTrip(c net.Conn, r *bufio.Reader, msg string) error {
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return errors.New("echo returned " + got)
	}
	return nil
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// usable tells whether a fresh connection to addr carries data.
func usable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	return roundTrip(c, bufio.NewReader(c), "probe") == nil
}

func TestProxyPassesData(t *testing.T) {
	n := newNet(t)
	addr, err := n.Proxy(LinkName("n1", "n2"), echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("proxy listens on %s, want 127.0.0.1", addr)
	}
	c, r := dial(t, addr)
	for _, msg := range []string{"hello", strings.Repeat("x", 100000)} {
		if err := roundTrip(c, r, msg); err != nil {
			t.Fatalf("round trip of %d bytes: %v", len(msg), err)
		}
	}
}

func TestLatency(t *testing.T) {
	n := newNet(t)
	addr, err := n.Proxy("l", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c, r := dial(t, addr)
	// An existing connection gets the delay too.
	if err := n.SetLatency("l", 100*time.Millisecond, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := roundTrip(c, r, "slow"); err != nil {
		t.Fatal(err)
	}
	// Each direction waits at least mean - jitter: a lower bound that a
	// slow machine cannot break.
	if rt := time.Since(start); rt < 160*time.Millisecond {
		t.Fatalf("round trip took %s with 100ms±20ms each way, want at least 160ms", rt)
	}
	// Setting it again replaces it; zero removes it.
	if err := n.SetLatency("l", 50*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	if err := n.SetLatency("l", 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, r, "fast again"); err != nil {
		t.Fatal(err)
	}
}

func TestCutAndHeal(t *testing.T) {
	n := newNet(t)
	addr, err := n.Proxy("c", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c, r := dial(t, addr)
	if err := roundTrip(c, r, "before"); err != nil {
		t.Fatal(err)
	}
	if err := n.Cut("c"); err != nil {
		t.Fatal(err)
	}
	if !n.IsCut("c") {
		t.Fatal("IsCut = false after Cut")
	}
	if err := n.Cut("c"); err != nil {
		t.Fatalf("cutting twice: %v", err)
	}
	// The connection in flight is gone…
	if err := roundTrip(c, r, "during"); err == nil {
		t.Fatal("an existing connection still carries data after Cut")
	}
	// …and new ones get nowhere.
	if usable(addr) {
		t.Fatal("a new connection carries data after Cut")
	}
	if err := n.Heal("c"); err != nil {
		t.Fatal(err)
	}
	if n.IsCut("c") {
		t.Fatal("IsCut = true after Heal")
	}
	if !usable(addr) {
		t.Fatal("no usable connection on the same address after Heal")
	}
	if err := n.Heal("c"); err != nil {
		t.Fatalf("healing twice: %v", err)
	}
}

func TestIsolateAndHealAll(t *testing.T) {
	n := newNet(t)
	echo := echoServer(t)
	addrs := map[string]string{}
	for _, l := range [][2]string{{"n1", "n2"}, {"n2", "n1"}, {"n1", "n3"}, {"n3", "n1"}, {"n2", "n3"}, {"n3", "n2"}} {
		name := LinkName(l[0], l[1])
		a, err := n.Proxy(name, echo)
		if err != nil {
			t.Fatal(err)
		}
		addrs[name] = a
	}
	cut, err := n.Isolate("n2")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"n1->n2", "n2->n1", "n2->n3", "n3->n2"}
	if !slices.Equal(cut, want) {
		t.Fatalf("Isolate(n2) cut %v, want %v", cut, want)
	}
	for name, a := range addrs {
		isolated := slices.Contains(want, name)
		if got := usable(a); got == isolated {
			t.Errorf("%s usable = %v with n2 isolated", name, got)
		}
	}
	if err := n.HealAll(); err != nil {
		t.Fatal(err)
	}
	for name, a := range addrs {
		if !usable(a) {
			t.Errorf("%s not usable after HealAll", name)
		}
	}
}

func TestErrors(t *testing.T) {
	n := newNet(t)
	echo := echoServer(t)
	if _, err := n.Proxy("p", echo); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"duplicate proxy", func() error { _, err := n.Proxy("p", echo); return err }(), `proxy "p" exists`},
		{"unknown cut", n.Cut("nope"), `no proxy "nope"`},
		{"unknown heal", n.Heal("nope"), `no proxy "nope"`},
		{"unknown latency", n.SetLatency("nope", time.Millisecond, 0), `no proxy "nope"`},
		{"jitter above latency", n.SetLatency("p", time.Millisecond, time.Second), "jitter 1s larger than latency 1ms"},
		{"isolate unknown node", func() error { _, err := n.Isolate("n9"); return err }(), "no link proxy has it"},
	}
	for _, tc := range cases {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to contain %q", tc.name, tc.err, tc.want)
		}
	}
}
