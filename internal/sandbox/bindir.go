package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// EnvBinDir names the environment variable that selects the PostgreSQL
// binaries (the directory holding initdb, pg_ctl and postgres).
const EnvBinDir = "PGMESH_PG_BIN"

// debianRoot is where Debian installs one directory per major version.
const debianRoot = "/usr/lib/postgresql"

// serverPrograms must all be in a bin dir for it to run a sandbox.
var serverPrograms = []string{"initdb", "pg_ctl", "postgres"}

// FindBinDir returns the directory of the PostgreSQL server binaries: flag
// (--pg-bin) if set, else $PGMESH_PG_BIN, else `pg_config --bindir`, else the
// newest /usr/lib/postgresql/*/bin. An explicit choice (flag or variable)
// that is not usable is an error rather than a silent fallback.
func FindBinDir(flag string) (string, error) {
	return findBinDir(flag, os.Getenv(EnvBinDir), pgConfigBinDir, debianRoot)
}

func findBinDir(flag, env string, pgConfig func() (string, error), root string) (string, error) {
	for _, explicit := range []struct{ from, dir string }{{"--pg-bin", flag}, {"$" + EnvBinDir, env}} {
		if explicit.dir == "" {
			continue
		}
		if err := checkBinDir(explicit.dir); err != nil {
			return "", fmt.Errorf("%s: %w", explicit.from, err)
		}
		return filepath.Abs(explicit.dir)
	}
	if dir, err := pgConfig(); err == nil && checkBinDir(dir) == nil {
		return dir, nil
	}
	if dir := newestVersionDir(root); dir != "" {
		return dir, nil
	}
	return "", fmt.Errorf("no PostgreSQL server binaries found (tried --pg-bin, $%s, pg_config --bindir, %s/*/bin): run `make deps` or scripts/install-pg.sh", EnvBinDir, root)
}

// checkBinDir reports why dir cannot run a sandbox.
func checkBinDir(dir string) error {
	for _, p := range serverPrograms {
		path := filepath.Join(dir, p)
		st, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("PostgreSQL bin dir %s: %w", dir, err)
		}
		if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("PostgreSQL bin dir %s: %s is not executable", dir, path)
		}
	}
	return nil
}

func pgConfigBinDir() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "pg_config", "--bindir").Output()
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// newestVersionDir returns root/<major>/bin of the highest numeric major
// that holds the server programs, or "".
func newestVersionDir(root string) string {
	entries, err := os.ReadDir(root)
	if err != nil {
		return ""
	}
	var majors []float64
	byMajor := map[float64]string{}
	for _, e := range entries {
		v, err := strconv.ParseFloat(e.Name(), 64) // "15", also old "9.6"
		if err != nil {
			continue
		}
		dir := filepath.Join(root, e.Name(), "bin")
		if checkBinDir(dir) != nil {
			continue
		}
		majors = append(majors, v)
		byMajor[v] = dir
	}
	if len(majors) == 0 {
		return ""
	}
	sort.Float64s(majors)
	return byMajor[majors[len(majors)-1]]
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

// ServerMajor runs `postgres --version` of binDir (allowed as root) and
// returns the major version.
func ServerMajor(ctx context.Context, binDir string) (int, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "postgres"), "--version").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%s/postgres --version: %w: %s", binDir, err, strings.TrimSpace(string(out)))
	}
	return parseMajor(string(out))
}

func parseMajor(version string) (int, error) {
	m := versionRE.FindStringSubmatch(version)
	if m == nil {
		return 0, errors.New("unrecognised postgres --version output: " + strings.TrimSpace(version))
	}
	return strconv.Atoi(m[1])
}
