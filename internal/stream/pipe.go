package stream

import "sync"

// item is one raw pgoutput message on its way from the goroutine that owns
// the connection to the goroutine that decodes and applies it.
type item struct {
	lsn  LSN    // XLogData start
	data []byte // WALData, owned by the item
}

// itemOverhead is what an item costs beyond its payload, so that a flood
// of tiny messages is bounded too.
const itemOverhead = 64

func (it item) size() int { return len(it.data) + itemOverhead }

// pipe is a FIFO bounded by the bytes it holds rather than by a message
// count: a 1 MB TOAST value and a 30-byte insert weigh what they weigh.
// One item larger than the limit still passes when the pipe is empty.
type pipe struct {
	mu    sync.Mutex
	q     []item
	bytes int
	limit int
	ready chan struct{} // a token after each push
	space chan struct{} // a token after each pop
}

func newPipe(limit int) *pipe {
	return &pipe{limit: limit, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// tryPush adds it unless that would exceed the limit.
func (p *pipe) tryPush(it item) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bytes > 0 && p.bytes+it.size() > p.limit {
		return false
	}
	p.q = append(p.q, it)
	p.bytes += it.size()
	signal(p.ready)
	return true
}

// pop removes the oldest item, if any.
func (p *pipe) pop() (item, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.q) == 0 {
		return item{}, false
	}
	it := p.q[0]
	p.q[0] = item{}
	p.q = p.q[1:]
	p.bytes -= it.size()
	signal(p.space)
	return it, true
}
