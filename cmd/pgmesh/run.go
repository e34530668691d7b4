package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

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
It serves Prometheus /metrics, /healthz, a status page (/) and its data
(/status.json) on agent.listen.

SIGINT or SIGTERM stop it cleanly: each link commits the transactions it
has queued, rolls back an unfinished one, and the next run resumes exactly
where it stopped. SIGHUP re-reads the config: the conflict settings
(policies, delta_columns, delete_wins; the links restart their sessions to
use them), the retention windows and agent.log_level (unless --log-level is
given) change at once; nodes, DSNs, the cluster name and agent.listen need
a restart.`,
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
			opts := agent.Options{Node: node, Listen: listen, Logger: slog.Default()}
			if f := cmd.Flag("log-level"); f == nil || !f.Changed {
				opts.LogLevel = logLevel
			}
			a, err := agent.New(cfg, opts)
			if err != nil {
				return err
			}
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						_ = a.Reload() // logged by the agent
					}
				}
			}()
			return a.Run(ctx)
		},
	}
	addConfigFlag(cmd, &cfgPath)
	cmd.Flags().StringVar(&node, "node", "", "run only the inbound links of this node")
	cmd.Flags().StringVar(&listen, "listen", "", `HTTP address for /metrics, /healthz and the status page (default agent.listen; "-" disables)`)
	return cmd
}
