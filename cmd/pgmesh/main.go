// Command pgmesh is the CLI of pgmesh: write-anywhere PostgreSQL over
// logical replication. Each verb lives in its own file and only turns flags
// into calls of the internal packages.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "pgmesh: "+msg)
		}
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}
