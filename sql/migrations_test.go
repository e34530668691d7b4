package migrations

import (
	"strings"
	"testing"
	"testing/fstest"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		files   fstest.MapFS
		want    []string
		wantErr string
	}{
		{
			name: "numeric order, not lexical",
			files: fstest.MapFS{
				"10_ten.sql":   {Data: []byte("SELECT 10")},
				"0002_two.sql": {Data: []byte("SELECT 2")},
				"0001_one.sql": {Data: []byte("SELECT 1")},
			},
			want: []string{"0001_one", "0002_two", "10_ten"},
		},
		{
			name:    "duplicate version",
			files:   fstest.MapFS{"0001_a.sql": {}, "1_b.sql": {}},
			wantErr: "same version 1",
		},
		{
			name:    "no prefix",
			files:   fstest.MapFS{"core.sql": {}},
			wantErr: "NNNN_name.sql",
		},
		{
			name:    "zero version",
			files:   fstest.MapFS{"0000_core.sql": {}},
			wantErr: "NNNN > 0",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := load(tt.files)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range ms {
				got = append(got, m.Name)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAllEmbedded(t *testing.T) {
	ms, err := All()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || ms[0].Name != "0001_core" || !strings.Contains(ms[0].SQL, "pgmesh.local_node") {
		t.Fatalf("embedded migrations = %+v, want 0001_core first", ms)
	}
}
