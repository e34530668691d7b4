package main

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/check"
	"github.com/pgmesh/pgmesh/internal/setup"
)

func init() { verbs = append(verbs, newInitCmd) }

func newInitCmd() *cobra.Command {
	var cfgPath string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the pgmesh schema, publication, slots and origins on every node",
		Long: `init runs the preflight checks of 'pgmesh check' and refuses to change
anything when one FAILs (it prints the findings and exits 1). Otherwise it
converges every node: it migrates the pgmesh schema, records the node's name,
creates or updates the publication 'pgmesh' (the replicated tables), creates
the slot pgmesh_<up>_<down> of every link on its upstream and the origin
pgmesh_<up> on its downstream. It prints each action per node; a second run
has nothing to do.

init copies no data. Changes committed after the slots exist replicate; rows
that existed before stay where they are. So the replicated tables must be
identical on all nodes (typically empty) when you run init, and nothing may
write to them until it has finished.`,
		Example: `  pgmesh init -c pgmesh.yaml
  pgmesh init -c pgmesh.yaml --json | jq -r '.actions[] | "\(.node): \(.action)"'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			rep, err := setup.Init(ctx, cfg, slog.Default())
			out := cmd.OutOrStdout()
			if asJSON {
				if jerr := printJSON(out, rep); jerr != nil {
					return jerr
				}
			} else {
				printInit(cmd, rep, errors.Is(err, setup.ErrPreflightFailed))
			}
			if err != nil {
				return exitCode(1, err)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	addJSONFlag(cmd, &asJSON)
	return cmd
}

// printInit prints every finding when preflight failed, else the warnings,
// then the actions.
func printInit(cmd *cobra.Command, rep *setup.Report, preflightFailed bool) {
	out := cmd.OutOrStdout()
	if preflightFailed {
		check.Render(out, rep.Findings)
		return
	}
	var warns []check.Finding
	for _, f := range rep.Findings {
		if f.Status == check.Warn {
			warns = append(warns, f)
		}
	}
	if len(warns) > 0 {
		check.Render(out, warns)
		fmt.Fprintln(out)
	}
	if len(rep.Actions) == 0 {
		fmt.Fprintln(out, "nothing to do: every node is converged")
	}
	// Grouped per node, in the order the nodes were first acted on.
	actions := slices.Clone(rep.Actions)
	first := map[string]int{}
	for i, a := range actions {
		if _, ok := first[a.Node]; !ok {
			first[a.Node] = i
		}
	}
	slices.SortStableFunc(actions, func(a, b setup.Action) int { return first[a.Node] - first[b.Node] })
	for _, a := range actions {
		fmt.Fprintln(out, a.String())
	}
	for _, n := range rep.Notes {
		fmt.Fprintln(out, "\nnote: "+n)
	}
}
