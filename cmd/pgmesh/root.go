package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/config"
)

// globals shared by all verbs.
type globals struct {
	logFormat string
	logLevel  string
	json      bool
}

var g globals

// logLevel is the level of the default logger's handler; `run` lets the
// agent change it (agent.log_level, on SIGHUP) unless --log-level was given.
var logLevel = new(slog.LevelVar)

// exitError carries a specific exit code (2 = invalid config, 1 = failure or
// findings). Its message is printed by main unless empty.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// exitCode wraps err so that main exits with code.
func exitCode(code int, err error) error { return &exitError{code: code, err: err} }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "pgmesh",
		Short: "Write-anywhere PostgreSQL on stock servers, over logical replication",
		Long: `pgmesh turns stock PostgreSQL 15+ servers into a multi-master cluster:
every node accepts writes, changes flow over logical replication, and conflicts
are resolved by commit timestamp with every losing row logged.`,
		Example: `  pgmesh sandbox up --dir /tmp/mesh --nodes 3
  pgmesh init -c /tmp/mesh/pgmesh.yaml
  pgmesh run -c /tmp/mesh/pgmesh.yaml
  pgmesh status -c /tmp/mesh/pgmesh.yaml`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return setupLogging(cmd.ErrOrStderr())
		},
	}
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	for _, c := range verbs {
		root.AddCommand(c())
	}
	// A bad flag is bad input, like an invalid config: exit code 2.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return exitCode(2, err) })
	return root
}

// verbs is filled by each verb's file in an init function, so that adding a
// verb touches one file only.
var verbs []func() *cobra.Command

func setupLogging(w io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return exitCode(2, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel))
	}
	logLevel.Set(level)
	opts := &slog.HandlerOptions{Level: logLevel}
	switch g.logFormat {
	case "text":
		slog.SetDefault(slog.New(slog.NewTextHandler(w, opts)))
	case "json":
		slog.SetDefault(slog.New(slog.NewJSONHandler(w, opts)))
	default:
		return exitCode(2, fmt.Errorf("--log-format %q: want text or json", g.logFormat))
	}
	return nil
}

// addConfigFlag adds -c/--config to cmd.
func addConfigFlag(cmd *cobra.Command, path *string) {
	cmd.Flags().StringVarP(path, "config", "c", "pgmesh.yaml", "cluster config file")
}

// addJSONFlag adds --json to cmd.
func addJSONFlag(cmd *cobra.Command, v *bool) {
	cmd.Flags().BoolVar(v, "json", false, "print JSON instead of a table")
}

// loadConfig reads the config; an invalid config exits with code 2.
func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, exitCode(2, err)
	}
	return cfg, nil
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// signalContext is cancelled on SIGINT or SIGTERM.
func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}
