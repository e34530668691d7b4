// Package migrations embeds the versioned SQL of the pgmesh schema. Files are
// named NNNN_name.sql and applied in numeric order by internal/setup; each
// runs once per database, in its own transaction.
package migrations

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
)

//go:embed *.sql
var files embed.FS

// Migration is one embedded SQL file.
type Migration struct {
	Version int    // numeric prefix: 1 for 0001_core.sql
	Name    string // file name without ".sql": "0001_core"
	SQL     string
}

// All returns the embedded migrations sorted by version. Two files with the
// same version or a file without a numeric prefix are an error, so that a bad
// addition fails every test instead of being skipped.
func All() ([]Migration, error) {
	return load(files)
}

func load(fsys fs.FS) ([]Migration, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	ms := make([]Migration, 0, len(names))
	seen := map[int]string{}
	for _, file := range names {
		name := strings.TrimSuffix(file, ".sql")
		prefix, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(prefix)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_name.sql with NNNN > 0", file)
		}
		if other, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %s and %s have the same version %d", other, file, v)
		}
		seen[v] = file
		body, err := fs.ReadFile(fsys, file)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", file, err)
		}
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms, nil
}
