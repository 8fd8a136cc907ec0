package scaleout

import (
	"sync"
	"sync/atomic"

	"github.com/kataras/neffos"
)

// asks is the table of this node's Server.Ask calls waiting for a reply,
// keyed by the id carried in the question's token and in the reply's
// envelope.
//
// Locks: mu guards the table and each entry's counts; it is a leaf lock.
type asks struct {
	seq atomic.Uint64
	n   atomic.Int64 // pending now

	mu     sync.Mutex
	closed bool
	m      map[uint64]*pendingAsk
}

// pendingAsk is a Server.Ask waiting for its reply.
type pendingAsk struct {
	reply    chan neffos.Message // first reply wins
	notHere  int                 // not-here answers so far
	expected int                 // not-here answers that mean nobody holds To; 0: not counting
	nowhere  chan struct{}       // closed when notHere reaches expected
}

func newAsks() *asks { return &asks{m: make(map[uint64]*pendingAsk)} }

// add registers a new Ask; ok is false after close.
func (a *asks) add() (id uint64, pa *pendingAsk, ok bool) {
	id = a.seq.Add(1)
	pa = &pendingAsk{reply: make(chan neffos.Message, 1), nowhere: make(chan struct{})}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return 0, nil, false
	}
	a.m[id] = pa
	a.n.Add(1)
	return id, pa, true
}

func (a *asks) remove(id uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.m[id]; ok {
		delete(a.m, id)
		a.n.Add(-1)
	}
}

// complete hands reply to Ask id, unless it was answered already (first
// reply wins), timed out, or is not ours.
func (a *asks) complete(id uint64, reply neffos.Message) {
	a.mu.Lock()
	pa := a.m[id]
	a.mu.Unlock()
	if pa == nil {
		return
	}
	select {
	case pa.reply <- reply:
	default:
	}
}

// expect sets how many not-here answers mean that no node holds the Ask's
// To client.
func (a *asks) expect(pa *pendingAsk, n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	pa.expected = n
	if pa.notHere >= n {
		close(pa.nowhere)
	}
}

// notHere counts a node's answer that it does not hold Ask id's To client.
func (a *asks) notHere(id uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	pa := a.m[id]
	if pa == nil {
		return
	}
	pa.notHere++
	if pa.expected > 0 && pa.notHere == pa.expected {
		close(pa.nowhere)
	}
}

// close refuses new Asks; pending ones end through the exchange's done
// channel.
func (a *asks) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	clear(a.m)
	a.n.Store(0)
}
