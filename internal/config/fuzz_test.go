package config

import (
	"reflect"
	"testing"
)

// FuzzParse checks that Parse never panics and that whatever it accepts
// survives Marshal and Parse unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(twoNodes))
	f.Add([]byte(fullConfig))
	f.Add([]byte("cluster: shop\nnodes:\n  - {name: a, dsn: x, id: 3}\nconflicts: {tables: {public.t: {delete_wins: true}}}\n"))
	f.Add([]byte("a: &x [1, *x]\n<<: *x\n"))
	f.Add([]byte("cluster: !!str shop\nnodes: |\n  text\n"))
	f.Add([]byte("---\n...\n---\n"))
	f.Add([]byte("cluster: shop\nnodes:\n  - name: a\n    dsn: ${HOME}\n"))
	for _, tc := range parseErrorTests {
		f.Add([]byte(tc.yaml))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz.yaml")
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		out := cfg.Marshal()
		back, err := Parse(out, "fuzz.yaml")
		if err != nil {
			t.Fatalf("Parse(Marshal()) failed: %v\ninput:\n%q\nmarshalled:\n%s", err, data, out)
		}
		if !reflect.DeepEqual(stripLines(back), stripLines(cfg)) {
			t.Fatalf("round trip changed the config\nbefore %+v\nafter  %+v", cfg, back)
		}
	})
}
