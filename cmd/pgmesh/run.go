package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/agent"
)

func init() { verbs = append(verbs, newRunCmd) }

func newRunCmd() *cobra.Command {
	var cfgPath, node, listen string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent: apply the inbound links of a node (or of all nodes) in the foreground",
		Long: `run streams every inbound link of --node from its upstream slot and applies
it on the node, restarting a failed link with backoff without stopping the
others. Without --node it runs every link of the cluster (handy for a sandbox).
It serves Prometheus /metrics, /healthz and a status page on agent.listen.
SIGINT or SIGTERM stop it cleanly; it resumes exactly where it stopped.`,
		Example: `  # one agent per node, usually next to the node's server
  pgmesh run -c pgmesh.yaml --node paris
  # every link of a local sandbox in one process, HTTP on another port
  pgmesh run -c /tmp/mesh/pgmesh.yaml --listen 127.0.0.1:9190`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			a, err := agent.New(cfg, agent.Options{Node: node, Listen: listen, Logger: slog.Default()})
			if err != nil {
				return err
			}
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			return a.Run(ctx)
		},
	}
	addConfigFlag(cmd, &cfgPath)
	cmd.Flags().StringVar(&node, "node", "", "run only the inbound links of this node")
	cmd.Flags().StringVar(&listen, "listen", "", `HTTP address for /metrics, /healthz and the status page (default agent.listen; "-" disables)`)
	return cmd
}
