// Package topology describes the links of a cluster (who replicates from
// whom) and proves that a set of links delivers every node's changes to
// every other node exactly once.
package topology

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Link is a directed edge: the downstream's agent consumes a slot on the
// upstream and applies the changes under an origin on the downstream.
type Link struct{ Up, Down string }

// Name is "up->down".
func (l Link) Name() string { return l.Up + "->" + l.Down }

// maxIdent is PostgreSQL's NAMEDATALEN-1: longer slot names are rejected.
const maxIdent = 63

// Slot is the logical replication slot of the link on the upstream:
// pgmesh_<up>_<down>. Node names may be 31 bytes, which would make the name
// too long, so a name over 63 bytes becomes pgmesh_ + its first bytes + a
// hash of both node names (deterministic, so every run agrees).
func (l Link) Slot() string {
	name := "pgmesh_" + l.Up + "_" + l.Down
	if len(name) <= maxIdent {
		return name
	}
	sum := sha256.Sum256([]byte(l.Up + "\x00" + l.Down))
	suffix := "_" + hex.EncodeToString(sum[:])[:10]
	return name[:maxIdent-len(suffix)] + suffix
}

// OriginName is the replication origin on a downstream for changes from
// node up: pgmesh_<up> (at most 38 bytes, as node names are at most 31).
func OriginName(up string) string { return "pgmesh_" + up }

// Origin is the replication origin of the link on its downstream.
func (l Link) Origin() string { return OriginName(l.Up) }

// FullMesh returns the N·(N−1) links between nodes, ordered by upstream then
// downstream in the order given.
func FullMesh(nodes []string) []Link {
	var links []Link
	for _, up := range nodes {
		for _, down := range nodes {
			if up != down {
				links = append(links, Link{Up: up, Down: down})
			}
		}
	}
	return links
}

// Inbound returns the links whose downstream is node, in order.
func Inbound(links []Link, node string) []Link {
	var out []Link
	for _, l := range links {
		if l.Down == node {
			out = append(out, l)
		}
	}
	return out
}

// Outbound returns the links whose upstream is node, in order.
func Outbound(links []Link, node string) []Link {
	var out []Link
	for _, l := range links {
		if l.Up == node {
			out = append(out, l)
		}
	}
	return out
}

// Plan is a set of links and their forwarding rules.
type Plan struct {
	Links []Link
	// Forward maps a link name to the origins (node names) it forwards in
	// addition to its upstream's own changes. Without an entry a link
	// carries only changes written on its upstream (origin filtering).
	Forward map[string][]string
}

// Carries reports whether link l ships changes that originated on node
// origin: its upstream's own changes, and the origins it forwards.
func (p Plan) Carries(l Link, origin string) bool {
	return l.Up == origin || slices.Contains(p.Forward[l.Name()], origin)
}

// maxProblems bounds the problems Prove lists.
const maxProblems = 10

// Prove checks that every node receives every other node's changes exactly
// once: for each (source, destination) there is one path of links that carry
// the source's changes. It also rejects malformed plans (unknown nodes,
// self-links, duplicate links, clashing slot names) and loops that would
// bring a node's changes back to it. The error lists each failing pair with
// the paths found.
func Prove(nodes []string, p Plan) error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	known := map[string]bool{}
	for _, n := range nodes {
		if known[n] {
			add("node %s is listed twice", n)
		}
		known[n] = true
	}
	links := map[string]bool{}
	slots := map[string]string{}
	for _, l := range p.Links {
		switch {
		case !known[l.Up] || !known[l.Down]:
			add("link %s: unknown node", l.Name())
			continue
		case l.Up == l.Down:
			add("link %s: a node cannot replicate from itself", l.Name())
			continue
		case links[l.Name()]:
			add("link %s is listed twice", l.Name())
			continue
		}
		links[l.Name()] = true
		// Underscores are legal in node names, so a_b->c and a->b_c share
		// the slot pgmesh_a_b_c.
		if other, clash := slots[l.Slot()]; clash {
			add("links %s and %s would both use slot %s; rename a node", other, l.Name(), l.Slot())
		}
		slots[l.Slot()] = l.Name()
	}
	forwarders := make([]string, 0, len(p.Forward))
	for name := range p.Forward {
		forwarders = append(forwarders, name)
	}
	slices.Sort(forwarders)
	for _, name := range forwarders {
		if !links[name] {
			add("forwarding rule for %s, which is not a link of the plan", name)
		}
		for _, o := range p.Forward[name] {
			if !known[o] {
				add("link %s forwards unknown origin %s", name, o)
			}
		}
	}
	if len(problems) == 0 {
		for _, src := range nodes {
			problems = append(problems, proveSource(nodes, p, src)...)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	if len(problems) > maxProblems {
		problems = append(problems[:maxProblems], fmt.Sprintf("and %d more problems", len(problems)-maxProblems))
	}
	return errors.New("topology is not exactly-once: " + strings.Join(problems, "; "))
}

// proveSource checks the changes of src. The links that carry them form a
// graph; every other node must be reachable from src and the reachable part
// must be a tree rooted at src: one inbound carrying link per reached node,
// none back into src. Then each destination has exactly one path.
func proveSource(nodes []string, p Plan, src string) []string {
	// Breadth-first from src; parent keeps one path to each reached node.
	parent := map[string]string{src: ""}
	queue := []string{src}
	for len(queue) > 0 {
		u := queue[0]
		queue = queue[1:]
		for _, l := range p.Links {
			if l.Up == u && p.Carries(l, src) {
				if _, seen := parent[l.Down]; !seen {
					parent[l.Down] = u
					queue = append(queue, l.Down)
				}
			}
		}
	}
	path := func(n string) string {
		hops := []string{n}
		for n != src {
			n = parent[n]
			hops = append(hops, n)
		}
		slices.Reverse(hops)
		return strings.Join(hops, "->")
	}
	var problems []string
	for _, dst := range nodes {
		var paths []string
		for _, l := range p.Links {
			if _, reached := parent[l.Up]; reached && l.Down == dst && p.Carries(l, src) {
				paths = append(paths, path(l.Up)+"->"+dst)
			}
		}
		switch {
		case dst == src && len(paths) > 0:
			problems = append(problems, fmt.Sprintf("changes from %s loop back to %s via %s", src, src, strings.Join(paths, ", ")))
		case dst == src:
		case len(paths) == 0:
			problems = append(problems, fmt.Sprintf("%s never receives changes from %s (no path; forward origin %s on a link into %s)", dst, src, src, dst))
		case len(paths) > 1:
			problems = append(problems, fmt.Sprintf("%s receives changes from %s %d times (paths %s)", dst, src, len(paths), strings.Join(paths, ", ")))
		}
	}
	return problems
}
