package scaleout

import (
	"sync"
	"sync/atomic"

	"github.com/kataras/neffos"
)

// hub is the node's local side: its websocket connections, which of them
// are in which namespace and room, and one bounded outbound queue per
// connection, drained by a goroutine that exists only while the queue is
// not empty.
//
// Fan-out reads only the hub's own index: it never calls into neffos, so a
// handler that holds a connection's lock (OnRoomLeft, OnNamespaceDisconnect)
// can broadcast without waiting for anybody. neffos's own check (is the
// connection still in the namespace and room?) runs again in Conn.Write, on
// the drain goroutine, with no hub lock held.
//
// Locks: mu guards the index; a peer's mu guards its queue. mu may be held
// while taking a peer's mu, never the other way round.
type hub struct {
	queueSize int

	mu     sync.RWMutex
	closed bool
	peers  map[*neffos.Conn]*peer
	byID   map[string][]*peer // connection id -> local connections with it
	bySID  map[string]*peer   // neffos's server connection id (FromExplicit)
	nss    map[string]*nsIndex
	hooked map[string]bool // namespaces whose room events reach the hub

	drains sync.WaitGroup

	down               atomic.Bool // closed, for drains (which hold a peer's mu)
	conns, queued      atomic.Int64
	delivered, dropped atomic.Uint64
}

// nsIndex is one namespace's local members. members maps a connection to
// whether neffos reported it connected (Subscribe); a connection that is
// still joining gets its messages held until then.
type nsIndex struct {
	members map[*peer]bool
	rooms   map[string]map[*peer]struct{}
}

// peer is a local websocket connection and its outbound queue.
type peer struct {
	c   *neffos.Conn
	id  string
	sid string // neffos's server connection id

	rooms map[string]map[string]struct{} // namespace -> rooms (guarded by hub.mu)

	mu       sync.Mutex
	queue    []*neffos.Message
	held     []*neffos.Message // for namespaces still joining
	running  bool
	dropping bool // a drop was reported; cleared when the queue drains
}

func newHub(queueSize int) *hub {
	return &hub{
		queueSize: queueSize,
		peers:     make(map[*neffos.Conn]*peer),
		byID:      make(map[string][]*peer),
		bySID:     make(map[string]*peer),
		nss:       make(map[string]*nsIndex),
		hooked:    make(map[string]bool),
	}
}

// add registers c. It reports false when c was known already or the hub is
// closed (then closed is true).
func (h *hub) add(c *neffos.Conn, native bool) (p *peer, closed bool) {
	p = &peer{c: c, id: c.ID(), sid: serverConnIDOf(c), rooms: make(map[string]map[string]struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, true
	}
	if _, dup := h.peers[c]; dup {
		return nil, false
	}
	h.peers[c] = p
	h.byID[p.id] = append(h.byID[p.id], p)
	if p.sid != "" {
		h.bySID[p.sid] = p
	}
	if native {
		// A native-only connection is in "" from the start; neffos never
		// calls Subscribe for it.
		h.memberLocked(p, "", true)
	}
	h.conns.Add(1)
	return p, false
}

// remove forgets c and discards what was queued for it.
func (h *hub) remove(c *neffos.Conn) *peer {
	h.mu.Lock()
	p := h.peers[c]
	if p == nil {
		h.mu.Unlock()
		return nil
	}
	delete(h.peers, c)
	if h.bySID[p.sid] == p {
		delete(h.bySID, p.sid)
	}
	h.byID[p.id] = without(h.byID[p.id], p)
	if len(h.byID[p.id]) == 0 {
		delete(h.byID, p.id)
	}
	for ns := range p.rooms {
		h.leaveNamespaceLocked(p, ns)
	}
	h.conns.Add(-1)
	h.mu.Unlock()
	p.mu.Lock()
	h.queued.Add(-int64(len(p.queue)))
	p.queue, p.held = nil, nil
	p.mu.Unlock()
	return p
}

func without(list []*peer, p *peer) []*peer {
	for i, q := range list {
		if q == p {
			return append(list[:i:i], list[i+1:]...)
		}
	}
	return list
}

func (h *hub) index(ns string) *nsIndex {
	x := h.nss[ns]
	if x == nil {
		x = &nsIndex{members: make(map[*peer]bool), rooms: make(map[string]map[*peer]struct{})}
		h.nss[ns] = x
	}
	return x
}

// memberLocked records p in ns, ready or still joining. Called with mu held.
func (h *hub) memberLocked(p *peer, ns string, ready bool) {
	if p.rooms[ns] == nil {
		p.rooms[ns] = make(map[string]struct{})
	}
	h.index(ns).members[p] = ready
}

// leaveNamespaceLocked forgets p's membership of ns and its rooms there.
func (h *hub) leaveNamespaceLocked(p *peer, ns string) {
	x := h.nss[ns]
	for room := range p.rooms[ns] {
		if x != nil {
			h.leaveRoomLocked(x, p, room)
		}
	}
	delete(p.rooms, ns)
	if x != nil {
		delete(x.members, p)
		if len(x.members) == 0 && len(x.rooms) == 0 {
			delete(h.nss, ns)
		}
	}
}

func (h *hub) leaveRoomLocked(x *nsIndex, p *peer, room string) {
	if set := x.rooms[room]; set != nil {
		delete(set, p)
		if len(set) == 0 {
			delete(x.rooms, room)
		}
	}
}

// joining implements hookTarget: c's connect to ns was accepted; neffos
// writes the reply next and calls Subscribe after it.
func (h *hub) joining(c *neffos.Conn, ns string) {
	h.withPeer(c, func(p *peer) {
		if _, ok := p.rooms[ns]; !ok {
			h.memberLocked(p, ns, false)
		}
	})
}

// withPeer runs fn on c's peer with mu held, when c is a local connection.
func (h *hub) withPeer(c *neffos.Conn, fn func(*peer)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p := h.peers[c]; p != nil {
		fn(p)
	}
}

// ready records that neffos reported c connected to ns, and queues what was
// held for it meanwhile, in order. It reports how many held messages did
// not fit in the queue.
func (h *hub) ready(c *neffos.Conn, ns string) (p *peer, dropped int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p = h.peers[c]; p == nil || h.closed {
		return nil, 0
	}
	h.memberLocked(p, ns, true)
	p.mu.Lock()
	defer p.mu.Unlock()
	keep := p.held[:0]
	for _, m := range p.held {
		if m.Namespace != ns {
			keep = append(keep, m)
		} else if !h.enqueueLocked(p, m) {
			dropped++
		}
	}
	clear(p.held[len(keep):])
	p.held = keep
	return p, dropped
}

// leave undoes ready (neffos's Unsubscribe).
func (h *hub) leave(c *neffos.Conn, ns string) *peer {
	h.mu.Lock()
	p := h.peers[c]
	if p != nil {
		h.leaveNamespaceLocked(p, ns)
	}
	h.mu.Unlock()
	if p != nil {
		p.mu.Lock()
		keep := p.held[:0]
		for _, m := range p.held {
			if m.Namespace != ns {
				keep = append(keep, m)
			}
		}
		clear(p.held[len(keep):])
		p.held = keep
		p.mu.Unlock()
	}
	return p
}

// joinRoom implements hookTarget.
func (h *hub) joinRoom(c *neffos.Conn, ns, room string) {
	h.withPeer(c, func(p *peer) {
		if _, ok := p.rooms[ns]; !ok {
			h.memberLocked(p, ns, false)
		}
		p.rooms[ns][room] = struct{}{}
		x := h.index(ns)
		if x.rooms[room] == nil {
			x.rooms[room] = make(map[*peer]struct{})
		}
		x.rooms[room][p] = struct{}{}
	})
}

// leaveRoom implements hookTarget.
func (h *hub) leaveRoom(c *neffos.Conn, ns, room string) {
	h.withPeer(c, func(p *peer) {
		delete(p.rooms[ns], room)
		if x := h.nss[ns]; x != nil {
			h.leaveRoomLocked(x, p, room)
		}
	})
}

// hook marks ns as one whose room events reach the hub (installHooks).
func (h *hub) hook(ns string) {
	h.mu.Lock()
	h.hooked[ns] = true
	h.mu.Unlock()
}

// excluded resolves who a broadcast must skip: the exact local connection
// of Broadcast(conn or nsConn), carried by neffos in m.FromExplicit, and
// the connection id other nodes must skip (that connection's id, or
// neffos.Exclude(id)'s). A conn of another server is skipped by its id
// here too.
func (h *hub) excluded(m *neffos.Message) (*peer, string) {
	if from := fromOf(m); from != "" {
		return nil, from
	}
	if m.FromExplicit == "" {
		return nil, ""
	}
	h.mu.RLock()
	p := h.bySID[m.FromExplicit]
	h.mu.RUnlock()
	if p == nil {
		// Another server's connection: skip every connection with its id.
		id, _ := idOfServerConnID(m.FromExplicit)
		return nil, id
	}
	return p, p.id
}

// count returns how many local connections have id.
func (h *hub) count(id string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.byID[id])
}

// fanout is one message for this node's connections.
type fanout struct {
	m        *neffos.Message
	to       string
	exclPeer *peer
	exclID   string
}

// fanout queues f.m to every local connection that should get it, without
// waiting for any of them. It returns how many it queued to (or held for),
// and the ids of connections whose queue just overflowed (to report once
// per episode, after the locks are released).
//
// The audience is read from the index: the To connections, the room's
// members, or the namespace's members, so a room message costs what the
// room has on this node. A namespace whose room events are not hooked
// (Init was not called, or its Events map was nil) is served from the
// namespace's members, and neffos's Conn.Write skips those outside the
// room.
func (h *hub) fanout(f fanout) (n int, slow []string) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return 0, nil
	}
	m := f.m
	x := h.nss[m.Namespace]
	if x == nil {
		return 0, nil
	}
	var queued int64
	send := func(p *peer, ready bool) {
		if p == f.exclPeer || (f.exclID != "" && p.id == f.exclID) {
			return
		}
		ok, report := h.push(p, m, ready)
		if ok {
			n++
			if ready {
				queued++
			}
		} else if report {
			slow = append(slow, p.id)
		}
	}
	switch {
	case f.to != "":
		for _, p := range h.byID[f.to] {
			ready, in := x.members[p]
			if in && (m.Room == "" || !h.hooked[m.Namespace] || inRoom(p, m)) {
				send(p, ready)
			}
		}
	case m.Room != "" && h.hooked[m.Namespace]:
		for p := range x.rooms[m.Room] {
			send(p, x.members[p])
		}
	default:
		for p, ready := range x.members {
			send(p, ready)
		}
	}
	h.queued.Add(queued)
	return n, slow
}

func inRoom(p *peer, m *neffos.Message) bool {
	_, ok := p.rooms[m.Namespace][m.Room]
	return ok
}

// push queues m for p, or holds it while p's namespace is still joining
// (neffos registers the namespace before it writes the connect reply and
// tells the exchange after it; a message written in between would reach
// the client before its Connect returned, which deadlocks a neffos client).
// Called with h.mu read-locked. It reports whether m was taken, and whether
// a drop must be reported.
func (h *hub) push(p *peer, m *neffos.Message, ready bool) (ok, report bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case ready:
		ok = h.enqueueLocked(p, m)
	case len(p.held) < h.queueSize:
		p.held = append(p.held, m)
		ok = true
	}
	if !ok {
		h.dropped.Add(1)
		report = !p.dropping
		p.dropping = true
	}
	return ok, report
}

// enqueueLocked queues m for p's drain goroutine, starting it if needed.
// Called with p.mu locked and h.mu held (so Close cannot start waiting for
// drains while one is being added).
func (h *hub) enqueueLocked(p *peer, m *neffos.Message) bool {
	if len(p.queue) >= h.queueSize {
		return false
	}
	p.queue = append(p.queue, m)
	if !p.running {
		p.running = true
		h.drains.Add(1)
		go h.drain(p)
	}
	return true
}

// drain writes p's queue to its connection, in order, and exits when the
// queue is empty or the hub closed.
func (h *hub) drain(p *peer) {
	defer h.drains.Done()
	var batch []*neffos.Message
	for {
		p.mu.Lock()
		if len(p.queue) == 0 || h.down.Load() {
			p.running = false
			p.dropping = false
			p.mu.Unlock()
			return
		}
		batch, p.queue = p.queue, batch[:0]
		p.mu.Unlock()
		h.queued.Add(-int64(len(batch)))
		for i, m := range batch {
			if p.c.Write(*m) {
				h.delivered.Add(1)
			}
			batch[i] = nil
		}
	}
}

// snapshot returns the local connections, for the sweeper.
func (h *hub) snapshot() []*neffos.Conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*neffos.Conn, 0, len(h.peers))
	for c := range h.peers {
		out = append(out, c)
	}
	return out
}

// close forgets every connection; drains stop after their current write.
func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	h.down.Store(true)
	h.peers = map[*neffos.Conn]*peer{}
	h.byID = map[string][]*peer{}
	h.bySID = map[string]*peer{}
	h.nss = map[string]*nsIndex{}
	h.conns.Store(0)
	h.mu.Unlock()
}
