package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/topology"
)

func init() { verbs = append(verbs, newPlanCmd) }

// planLink is one row of `pgmesh plan`.
type planLink struct {
	Link       string   `json:"link"`
	Upstream   string   `json:"upstream"`
	Downstream string   `json:"downstream"`
	Slot       string   `json:"slot"`   // on the upstream
	Origin     string   `json:"origin"` // on the downstream
	Forwards   []string `json:"forwards,omitempty"`
}

// planResult is the --json output of `pgmesh plan`.
type planResult struct {
	Cluster      string     `json:"cluster"`
	Nodes        []string   `json:"nodes"`
	Links        []planLink `json:"links"`
	Proven       bool       `json:"proven"`
	Sources      int        `json:"sources"`
	Destinations int        `json:"destinations_per_source"`
	Problem      string     `json:"problem,omitempty"`
}

func newPlanCmd() *cobra.Command {
	var cfgPath string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show the links of the cluster and prove each change arrives exactly once",
		Long: `plan reads the config, builds the links of the cluster (a full mesh: one
link per ordered pair of nodes) and proves that every node receives every
other node's changes exactly once. It prints each link with the replication
slot it uses on its upstream and the replication origin it applies under on
its downstream. It connects to no database. Exit code 2 for an invalid
config, 1 when the proof fails.`,
		Example: `  pgmesh plan -c pgmesh.yaml
  pgmesh plan -c pgmesh.yaml --json | jq -r '.links[].slot'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			nodes := cfg.NodeNames()
			plan := topology.Plan{Links: topology.FullMesh(nodes)}
			res := planResult{Cluster: cfg.Cluster, Nodes: nodes, Sources: len(nodes), Destinations: len(nodes) - 1}
			for _, l := range plan.Links {
				res.Links = append(res.Links, planLink{
					Link: l.Name(), Upstream: l.Up, Downstream: l.Down,
					Slot: l.Slot(), Origin: l.Origin(), Forwards: plan.Forward[l.Name()],
				})
			}
			proof := topology.Prove(nodes, plan)
			res.Proven = proof == nil
			if proof != nil {
				res.Problem = proof.Error()
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), res); err != nil {
					return err
				}
			} else {
				printPlan(cmd, res)
			}
			if proof != nil {
				return exitCode(1, proof)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	addJSONFlag(cmd, &asJSON)
	return cmd
}

func printPlan(cmd *cobra.Command, res planResult) {
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "cluster %s: %d nodes, %d links\n\n", res.Cluster, len(res.Nodes), len(res.Links))
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "LINK\tUPSTREAM\tDOWNSTREAM\tSLOT (ON UPSTREAM)\tORIGIN (ON DOWNSTREAM)")
	for _, l := range res.Links {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", l.Link, l.Upstream, l.Downstream, l.Slot, l.Origin)
	}
	w.Flush()
	fmt.Fprintln(out)
	if res.Proven {
		fmt.Fprintf(out, "exactly-once: proven (%d sources × %d destinations, one path each)\n", res.Sources, res.Destinations)
	} else {
		fmt.Fprintln(out, "exactly-once: NOT proven")
	}
}
