// Package check runs the checks that tell whether a cluster can be (or still
// is) replicated by pgmesh: preflight before `init`, and the same findings
// for `pgmesh check`. Every finding names the node and object it is about
// and, when something must change, the SQL or step that fixes it.
package check

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Status is the outcome of one check.
type Status string

const (
	Pass Status = "PASS"
	Warn Status = "WARN" // works, but an operator should know
	Fail Status = "FAIL" // init refuses; replication would break
)

// Finding is one result of one check on one node (Node is "" for findings
// about the whole cluster).
type Finding struct {
	Status  Status `json:"status"`
	Node    string `json:"node"`
	Check   string `json:"check"`
	Object  string `json:"object"`
	Message string `json:"message"`
	Fix     string `json:"fix"`
}

// Failed reports whether any finding is a FAIL.
func Failed(fs []Finding) bool {
	for _, f := range fs {
		if f.Status == Fail {
			return true
		}
	}
	return false
}

// Count returns how many findings have status s.
func Count(fs []Finding, s Status) int {
	n := 0
	for _, f := range fs {
		if f.Status == s {
			n++
		}
	}
	return n
}

// Render writes the findings as an aligned table, then the fix of every
// finding that has one, then a one-line summary.
func Render(w io.Writer, fs []Finding) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tNODE\tCHECK\tOBJECT\tMESSAGE")
	for _, f := range fs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.Status, dash(f.Node), f.Check, dash(f.Object), oneLine(f.Message))
	}
	tw.Flush()
	first := true
	for _, f := range fs {
		if f.Fix == "" {
			continue
		}
		if first {
			fmt.Fprintln(w)
			first = false
		}
		where := strings.Join(nonEmpty(f.Node, f.Check, f.Object), " ")
		fmt.Fprintf(w, "FIX %s %s:\n", f.Status, where)
		for _, line := range strings.Split(f.Fix, "\n") {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
	fmt.Fprintf(w, "\n%d FAIL, %d WARN, %d PASS\n", Count(fs, Fail), Count(fs, Warn), Count(fs, Pass))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps the table aligned when a server error spans lines.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
