package stream

import "testing"

func TestPipeBoundedByBytes(t *testing.T) {
	p := newPipe(1000)
	small := item{data: make([]byte, 400-itemOverhead)}
	huge := item{data: make([]byte, 5000)}
	steps := []struct {
		push bool // else pop
		it   item
		ok   bool
	}{
		{true, huge, true},   // larger than the limit, but the pipe is empty
		{true, small, false}, // full
		{false, huge, true},
		{true, small, true},
		{true, small, true},
		{true, small, false}, // 1200 > 1000
		{false, small, true},
		{true, small, true},
		{false, small, true},
		{false, small, true},
		{false, item{}, false}, // empty
	}
	for i, s := range steps {
		if s.push {
			if got := p.tryPush(s.it); got != s.ok {
				t.Fatalf("step %d: push %d bytes: %v, want %v (holding %d)", i, len(s.it.data), got, s.ok, p.bytes)
			}
			continue
		}
		got, ok := p.pop()
		if ok != s.ok || len(got.data) != len(s.it.data) {
			t.Fatalf("step %d: pop %d bytes, %v; want %d, %v", i, len(got.data), ok, len(s.it.data), s.ok)
		}
	}
	if p.bytes != 0 {
		t.Fatalf("empty pipe holds %d bytes", p.bytes)
	}
}
