package scaleout

import (
	"context"
	"sync"
)

// MemoryBroker is an in-process broker: the exchanges built on the Brokers
// it hands out reach each other as nodes on Redis or NATS would, inside one
// process. It serves single-binary demos and users' own tests of a
// multi-node setup; it is not a stand-in for Redis or NATS in their tests.
//
// Publish delivers synchronously, in publish order, to every subscribed
// node; the engine's receive path only decodes and queues, so a publish
// costs O(nodes).
type MemoryBroker struct {
	mu   sync.RWMutex
	subs map[string]map[*memoryNode]struct{}
}

// NewMemoryBroker returns an empty in-process broker.
func NewMemoryBroker() *MemoryBroker {
	return &MemoryBroker{subs: make(map[string]map[*memoryNode]struct{})}
}

// Broker returns a new node endpoint: give each node's engine its own, as
// in New(mb.Broker(), "", Options{}).
func (mb *MemoryBroker) Broker() Broker { return &memoryNode{mb: mb} }

type memoryNode struct {
	mb      *MemoryBroker
	deliver func(string, []byte)
	closed  bool // guarded by mb.mu

	dmu     sync.RWMutex // held while delivering to this node
	dclosed bool         // guarded by dmu: no delivery after Close
}

var _ BrokerInspector = (*memoryNode)(nil)

func (n *memoryNode) Start(deliver func(string, []byte), _ func(error)) error {
	n.deliver = deliver
	return nil
}

func (n *memoryNode) Subscribe(_ context.Context, channels ...string) error {
	n.mb.mu.Lock()
	defer n.mb.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	for _, channel := range channels {
		set := n.mb.subs[channel]
		if set == nil {
			set = make(map[*memoryNode]struct{})
			n.mb.subs[channel] = set
		}
		set[n] = struct{}{}
	}
	return nil
}

func (n *memoryNode) Unsubscribe(_ context.Context, channels ...string) error {
	n.mb.mu.Lock()
	defer n.mb.mu.Unlock()
	for _, channel := range channels {
		n.unsubscribeLocked(channel)
	}
	return nil
}

func (n *memoryNode) unsubscribeLocked(channel string) {
	if set := n.mb.subs[channel]; set != nil {
		delete(set, n)
		if len(set) == 0 {
			delete(n.mb.subs, channel)
		}
	}
}

func (n *memoryNode) Publish(_ context.Context, channel string, payload []byte) (int, error) {
	n.mb.mu.RLock()
	if n.closed {
		n.mb.mu.RUnlock()
		return 0, ErrClosed
	}
	subs := make([]*memoryNode, 0, len(n.mb.subs[channel]))
	for sub := range n.mb.subs[channel] {
		subs = append(subs, sub)
	}
	n.mb.mu.RUnlock()
	// Delivered without the broker's lock: a node may publish from inside
	// its deliver callback.
	for _, sub := range subs {
		sub.deliverOpen(channel, payload)
	}
	return len(subs), nil
}

// deliverOpen delivers unless the node closed meanwhile, and keeps Close
// from returning during a delivery.
func (n *memoryNode) deliverOpen(channel string, payload []byte) {
	n.dmu.RLock()
	defer n.dmu.RUnlock()
	if !n.dclosed {
		n.deliver(channel, payload)
	}
}

func (n *memoryNode) Close() error {
	n.dmu.Lock()
	n.dclosed = true
	n.dmu.Unlock()
	n.mb.mu.Lock()
	defer n.mb.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	for channel := range n.mb.subs {
		n.unsubscribeLocked(channel)
	}
	return nil
}

// Conns is 0: an in-process broker holds no connection.
func (n *memoryNode) Conns(context.Context) (int, error) { return 0, nil }

func (n *memoryNode) Subscribers(_ context.Context, channel string) (int, error) {
	n.mb.mu.RLock()
	defer n.mb.mu.RUnlock()
	return len(n.mb.subs[channel]), nil
}
