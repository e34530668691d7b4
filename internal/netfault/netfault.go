// Package netfault puts a TCP proxy on every link of a cluster so that a
// scenario can add latency and jitter, cut a link or isolate a node, and heal
// it, at run time. The proxies are Toxiproxy's (used as a library, without
// its HTTP API); they listen on 127.0.0.1 only.
//
// A cut tears down every connection through the proxy and resets every new
// one at its first byte until Heal. The proxy keeps its address (the
// clients' DSNs stay valid): it stops and at once listens again, with a
// reset toxic in both directions, rather than leaving its port free for
// the kernel to hand to some outgoing connection meanwhile.
package netfault

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// linkSep separates the two ends in a link's proxy name (see LinkName).
const linkSep = "->"

// LinkName is the proxy name of the link up → down, the form Isolate
// understands.
func LinkName(up, down string) string { return up + linkSep + down }

// Net is a set of named proxies.
type Net struct {
	mu      sync.Mutex
	server  *toxiproxy.ApiServer
	proxies map[string]*proxy
}

type proxy struct {
	p       *toxiproxy.Proxy
	addr    string // the address it listens on, kept across cuts
	cut     bool
	latency bool // a latency toxic is installed
}

// New returns an empty Net.
func New() *Net {
	return &Net{
		server:  toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop()),
		proxies: map[string]*proxy{},
	}
}

// Proxy starts a proxy called name to upstreamAddr ("host:port") and
// returns the address it listens on (127.0.0.1, a free port).
func (n *Net) Proxy(name, upstreamAddr string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.proxies[name]; ok {
		return "", fmt.Errorf("netfault: proxy %q exists", name)
	}
	p := toxiproxy.NewProxy(n.server, name, "127.0.0.1:0", upstreamAddr)
	if err := p.Start(); err != nil {
		return "", fmt.Errorf("netfault: start proxy %s to %s: %w", name, upstreamAddr, err)
	}
	n.proxies[name] = &proxy{p: p, addr: p.Listen}
	return p.Listen, nil
}

// Names returns the proxy names, sorted.
func (n *Net) Names() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	names := make([]string, 0, len(n.proxies))
	for name := range n.proxies {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func (n *Net) get(name string) (*proxy, error) {
	p, ok := n.proxies[name]
	if !ok {
		return nil, fmt.Errorf("netfault: no proxy %q", name)
	}
	return p, nil
}

// SetLatency delays every chunk of data by mean ± jitter (uniform) in each
// direction, so a round trip takes about twice mean. Zero mean and jitter
// remove the delay. Data already in flight keeps its order.
func (n *Net) SetLatency(name string, mean, jitter time.Duration) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	p, err := n.get(name)
	if err != nil {
		return err
	}
	if jitter > mean {
		return fmt.Errorf("netfault: %s: jitter %s larger than latency %s", name, jitter, mean)
	}
	for _, stream := range []string{"upstream", "downstream"} {
		toxic := "latency_" + stream
		if p.latency {
			if err := p.p.Toxics.RemoveToxic(context.Background(), toxic); err != nil {
				return fmt.Errorf("netfault: %s: remove latency: %w", name, err)
			}
		}
		if mean == 0 && jitter == 0 {
			continue
		}
		body := fmt.Sprintf(`{"name":%q,"type":"latency","stream":%q,"toxicity":1,"attributes":{"latency":%d,"jitter":%d}}`,
			toxic, stream, mean.Milliseconds(), jitter.Milliseconds())
		if _, err := p.p.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
			return fmt.Errorf("netfault: %s: add latency: %w", name, err)
		}
	}
	p.latency = mean != 0 || jitter != 0
	return nil
}

// Cut tears down every connection through the proxy and resets new ones
// until Heal. Cutting a cut proxy does nothing.
func (n *Net) Cut(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	p, err := n.get(name)
	if err != nil {
		return err
	}
	if p.cut {
		return nil
	}
	for _, stream := range []string{"upstream", "downstream"} {
		body := fmt.Sprintf(`{"name":"cut_%s","type":"reset_peer","stream":%q,"toxicity":1,"attributes":{"timeout":0}}`, stream, stream)
		if _, err := p.p.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
			return fmt.Errorf("netfault: cut %s: %w", name, err)
		}
	}
	p.cut = true
	// Stop closes every connection at once (the toxic would only reset a
	// connection when data next flows); new ones meet the toxic.
	p.p.Stop()
	return p.listen(name)
}

// relistenRetry bounds how long a proxy tries to listen again on its port.
const relistenRetry = 5 * time.Second

func (p *proxy) listen(name string) error {
	deadline := time.Now().Add(relistenRetry)
	for {
		p.p.Listen = p.addr
		err := p.p.Start()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netfault: %s: listen on %s again: %w", name, p.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Heal lets connections through again. Healing a proxy that is not cut
// does nothing.
func (n *Net) Heal(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	p, err := n.get(name)
	if err != nil {
		return err
	}
	return p.heal(name)
}

func (p *proxy) heal(name string) error {
	if !p.cut {
		return nil
	}
	for _, stream := range []string{"upstream", "downstream"} {
		if err := p.p.Toxics.RemoveToxic(context.Background(), "cut_"+stream); err != nil {
			return fmt.Errorf("netfault: heal %s: %w", name, err)
		}
	}
	p.cut = false
	return nil
}

// Isolate cuts every proxy named LinkName(node, x) or LinkName(x, node):
// the node can neither send nor receive. It returns the names it cut.
func (n *Net) Isolate(node string) ([]string, error) {
	var cut []string
	for _, name := range n.Names() {
		up, down, ok := strings.Cut(name, linkSep)
		if !ok || (up != node && down != node) {
			continue
		}
		if err := n.Cut(name); err != nil {
			return cut, err
		}
		cut = append(cut, name)
	}
	if len(cut) == 0 {
		return nil, fmt.Errorf("netfault: isolate %s: no link proxy has it as an end", node)
	}
	return cut, nil
}

// HealAll heals every cut proxy.
func (n *Net) HealAll() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	for name, p := range n.proxies {
		errs = append(errs, p.heal(name))
	}
	return errors.Join(errs...)
}

// IsCut reports whether the proxy is cut.
func (n *Net) IsCut(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	p, ok := n.proxies[name]
	return ok && p.cut
}

// Close stops every proxy and closes its connections.
func (n *Net) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, p := range n.proxies {
		p.p.Stop()
		delete(n.proxies, name)
	}
	return nil
}
