package check

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultMaxSlotWAL is the retained WAL above which a slot is a WARN: 1 GiB
// is minutes to hours of a busy node's writes, i.e. a link that is not
// keeping up or an agent that is down.
const DefaultMaxSlotWAL = 1 << 30

// Options are the thresholds of PreflightWith. Zero fields take defaults.
type Options struct {
	// MaxSlotWAL is the WAL (bytes) a pgmesh slot may retain before it is
	// a WARN; default DefaultMaxSlotWAL.
	MaxSlotWAL int64
}

func (o Options) withDefaults() Options {
	if o.MaxSlotWAL <= 0 {
		o.MaxSlotWAL = DefaultMaxSlotWAL
	}
	return o
}

// sizeUnits are PostgreSQL's memory units (powers of 1024, as in
// max_slot_wal_keep_size = '1GB'), plus their IEC spellings.
var sizeUnits = []struct {
	suffix string
	factor int64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"KB", 1 << 10},
	{"B", 1},
}

// ParseSize reads a size the way PostgreSQL settings write it: "1GB",
// "512MB", "64kB", or a plain number of bytes. Units are powers of 1024.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	factor := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, factor = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.factor
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes or a number with kB, MB, GB or TB", s)
	}
	if n > (1<<63-1)/factor {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * factor, nil
}

// FormatSize prints bytes in the largest unit that keeps one decimal
// meaningful: "1.5 GB", "300 MB", "12 kB", "512 B".
func FormatSize(b int64) string {
	units := []struct {
		name   string
		factor int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}}
	for _, u := range units {
		if b >= u.factor {
			v := float64(b) / float64(u.factor)
			if v >= 10 || v == float64(int64(v)) {
				return fmt.Sprintf("%.0f %s", v, u.name)
			}
			return fmt.Sprintf("%.1f %s", v, u.name)
		}
	}
	return fmt.Sprintf("%d B", b)
}
