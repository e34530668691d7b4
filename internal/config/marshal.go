package config

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Marshal renders c as a pgmesh.yaml that Parse accepts, with every default
// written out. DSNs are written as stored, that is with ${VAR} already
// expanded: a file written by Marshal may hold passwords.
func (c *Config) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "cluster: %s\n", q(c.Cluster))
	b.WriteString("nodes:\n")
	for i, n := range c.Nodes {
		fmt.Fprintf(&b, "  - name: %s\n    dsn: %s\n", q(n.Name), q(n.DSN))
		if n.AdminDSN != "" {
			fmt.Fprintf(&b, "    admin_dsn: %s\n", q(n.AdminDSN))
		}
		if n.ID != i+1 {
			fmt.Fprintf(&b, "    id: %d\n", n.ID)
		}
	}
	b.WriteString("replicate:\n")
	fmt.Fprintf(&b, "  schemas: %s\n", qList(c.Replicate.Schemas))
	if len(c.Replicate.Exclude) > 0 {
		fmt.Fprintf(&b, "  exclude: %s\n", qList(c.Replicate.Exclude))
	}
	b.WriteString("conflicts:\n")
	fmt.Fprintf(&b, "  default: %s\n", q(string(c.Conflicts.Default)))
	fmt.Fprintf(&b, "  log_retention: %s\n", q(FormatDuration(c.Conflicts.LogRetention)))
	fmt.Fprintf(&b, "  tombstone_retention: %s\n", q(FormatDuration(c.Conflicts.TombstoneRetention)))
	if len(c.Conflicts.Tables) > 0 {
		b.WriteString("  tables:\n")
		names := make([]string, 0, len(c.Conflicts.Tables))
		for name := range c.Conflicts.Tables {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			tc := c.Conflicts.Tables[name]
			var fields []string
			if tc.Policy != "" {
				fields = append(fields, "policy: "+q(string(tc.Policy)))
			}
			if len(tc.DeltaColumns) > 0 {
				fields = append(fields, "delta_columns: "+qList(tc.DeltaColumns))
			}
			if tc.DeleteWins {
				fields = append(fields, "delete_wins: true")
			}
			fmt.Fprintf(&b, "    %s: {%s}\n", q(name), strings.Join(fields, ", "))
		}
	}
	fmt.Fprintf(&b, "sequences:\n  strategy: %s\n  max_nodes: %d\n", q(c.Sequences.Strategy), c.Sequences.MaxNodes)
	fmt.Fprintf(&b, "ddl:\n  capture: %s\n", q(c.DDL.Capture))
	fmt.Fprintf(&b, "agent:\n  listen: %s\n  apply_workers: %d\n", q(c.Agent.Listen), c.Agent.Workers())
	if c.Agent.LogLevel != "" {
		fmt.Fprintf(&b, "  log_level: %s\n", q(c.Agent.LogLevel))
	}
	return b.Bytes()
}

// q quotes s as a YAML double-quoted scalar; Go's escapes (\n, \t, \xNN,
// \uNNNN, \UNNNNNNNN, \", \\) are all valid YAML escapes.
func q(s string) string { return strconv.Quote(s) }

func qList(list []string) string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = q(s)
	}
	return "[" + strings.Join(out, ", ") + "]"
}
