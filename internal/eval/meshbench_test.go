package eval

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/sandbox"
)

// TestBenchMesh runs `pgmesh bench mesh` small: both meshes take the load,
// both are measured, and the pgmesh mesh converges. On PostgreSQL 15 (no
// origin = none for the native mesh) it refuses with the fix. The lags and
// rates are not checked (no timing in tests), only that they were measured.
func TestBenchMesh(t *testing.T) {
	bin, err := sandbox.FindBinDir(os.Getenv("PGMESH_PG_BIN"))
	if err != nil {
		t.Fatal(err)
	}
	o := MeshBenchOptions{BinDir: bin, Nodes: 2, Rate: 20, Duration: 4 * time.Second, Scale: 1, Out: io.Discard}
	major, err := sandbox.ServerMajor(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	res, err := BenchMesh(context.Background(), o)
	if major < 16 {
		if err == nil || !strings.Contains(err.Error(), "PostgreSQL 16 or newer") {
			t.Fatalf("bench mesh on PostgreSQL %d: %v, want the refusal that names the version needed", major, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("bench mesh: %v", err)
	}
	if len(res.Meshes) != 2 || res.Meshes[0].Mesh != "native" || res.Meshes[1].Mesh != "pgmesh" {
		t.Fatalf("bench mesh: %+v, want the native mesh then the pgmesh mesh", res)
	}
	for _, m := range res.Meshes {
		if m.Samples == 0 || len(m.ClientTPS) != 2 {
			t.Errorf("%s mesh: %d lag samples, client rates %v: want samples and one rate per node", m.Mesh, m.Samples, m.ClientTPS)
		}
	}
	if pm := res.Meshes[1]; !pm.Converged || pm.LinkRestarts != 0 {
		t.Errorf("pgmesh mesh: converged %v (differing %v), %d link restarts, errors %q", pm.Converged, pm.Differing, pm.LinkRestarts, pm.Errors)
	}
}
