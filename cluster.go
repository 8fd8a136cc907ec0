package scaleout

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kataras/neffos"
)

// Cluster operations: what neffos answers only for the node you ask, asked
// of every node through the broker. Each node's heartbeat (once per
// second, on P.hb, with its sequence numbers) also carries its address,
// connection count, namespaces, uptime and Stats, so every node knows the
// live nodes without asking (Nodes). Listing connections, remote control
// and node-to-node messages are requests published once on P.ctl, which
// every node reads; each other node answers on the asking node's own
// channel. A request waits for the nodes the asking node knows to be alive,
// until its context's deadline; nodes that did not answer are named in the
// result.
//
// Requests from other nodes run on ctlWorkers goroutines of the engine's
// (they may call into neffos: Close, JoinRoom, Leave; or the user's
// OnNodeMessage), at most ctlQueue waiting; more are dropped and their
// askers see those nodes as not answering. Nothing here is reachable from a
// websocket client's messages: only envelopes read from the broker's
// control and node channels trigger an operation.

const (
	// NodeExpiry is how long a node stays in Nodes after its last
	// heartbeat (heartbeats come once a second).
	NodeExpiry = 5 * time.Second

	ctlWorkers = 4
	ctlQueue   = 256
	// ctlSeen bounds the request ids remembered to drop a request that
	// arrives twice (through two brokers, Redundant).
	ctlSeen = 4096

	kindControl      = 9
	kindControlReply = 10
)

// Control operations (the envelope's event field).
const (
	opConns      = "conns"
	opCount      = "count"
	opDisconnect = "disconnect"
	opJoin       = "join"
	opLeave      = "leave"
	opEmit       = "emit"
	opSurvey     = "survey"
)

// Node is one node of the cluster, as of its last heartbeat.
type Node struct {
	// ID is the node's id (16 hex digits), new at every start.
	ID string
	// Addr is what the node's Options.Addr says (empty when not set).
	Addr string
	// Self is true for the node that answered Nodes.
	Self bool
	// Conns is the number of websocket connections the node holds.
	Conns int
	// Namespaces are the namespaces the node serves (from Init).
	Namespaces []string
	// Uptime is how long the node's exchange has run.
	Uptime time.Duration
	// Stats are the node's counters.
	Stats Stats
	// LastSeen is when this node last heard from it.
	LastSeen time.Time
}

// Conn is one websocket connection somewhere in the cluster.
type Conn struct {
	// ID is the connection's id (neffos's Conn.ID).
	ID string
	// Node is the id of the node that holds it.
	Node string
	// Rooms maps each namespace the connection is in to its rooms there.
	Rooms map[string][]string
}

// Presence is the answer of Cluster.Conns.
type Presence struct {
	// Conns are the matching connections, every answering node's.
	Conns []Conn
	// Missing are the live nodes that did not answer in time.
	Missing []string
}

// SurveyResult is the answer of Cluster.Survey.
type SurveyResult struct {
	// Replies maps each answering node's id to its reply.
	Replies map[string][]byte
	// Errors maps each node whose handler failed to its error.
	Errors map[string]error
	// Missing are the live nodes that did not answer in time.
	Missing []string
}

// nodes is the table of other nodes, fed by heartbeats.
//
// Locks: mu is a leaf lock.
type nodes struct {
	mu    sync.Mutex
	m     map[string]*Node
	fresh []Node // joined, not yet announced to OnNodeJoin
}

// seen records a heartbeat's node info.
func (ns *nodes) seen(n Node) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.m == nil {
		ns.m = make(map[string]*Node)
	}
	if _, ok := ns.m[n.ID]; !ok {
		ns.fresh = append(ns.fresh, n)
	}
	ns.m[n.ID] = &n
}

// expire removes nodes not heard from since cutoff; it returns them, and
// the nodes that joined since the last call.
func (ns *nodes) expire(cutoff time.Time) (joined, left []Node) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	joined, ns.fresh = ns.fresh, nil
	for id, n := range ns.m {
		if n.LastSeen.Before(cutoff) {
			delete(ns.m, id)
			left = append(left, *n)
		}
	}
	return joined, left
}

func (ns *nodes) list() []Node {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	out := make([]Node, 0, len(ns.m))
	for _, n := range ns.m {
		out = append(out, *n)
	}
	return out
}

// controls is the table of this node's requests waiting for answers.
//
// Locks: mu is a leaf lock.
type controls struct {
	seq atomic.Uint64
	mu  sync.Mutex
	m   map[uint64]*pendingCtl

	seenMu sync.Mutex
	seen   map[ctlKey]struct{} // other nodes' requests taken, the last ctlSeen
	order  []ctlKey
}

type ctlKey struct {
	origin string
	id     uint64
}

// first reports whether origin's request id is new here, and remembers it.
func (c *controls) first(origin string, id uint64) bool {
	k := ctlKey{origin, id}
	c.seenMu.Lock()
	defer c.seenMu.Unlock()
	if _, dup := c.seen[k]; dup {
		return false
	}
	if c.seen == nil {
		c.seen = make(map[ctlKey]struct{})
	}
	c.seen[k] = struct{}{}
	c.order = append(c.order, k)
	if len(c.order) > ctlSeen {
		delete(c.seen, c.order[0])
		c.order = c.order[1:]
	}
	return true
}

type ctlReply struct {
	from string
	body []byte
	err  error
}

// pendingCtl is a request waiting for its answers: one from each node it
// was sent to (from: still expected); a second copy, through a second
// broker, and answers of other nodes are dropped.
type pendingCtl struct {
	ch   chan ctlReply
	from map[string]bool
}

func (c *controls) add(nodes map[string]bool) (uint64, chan ctlReply) {
	id := c.seq.Add(1)
	p := &pendingCtl{ch: make(chan ctlReply, len(nodes)), from: maps.Clone(nodes)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[uint64]*pendingCtl)
	}
	c.m[id] = p
	return id, p.ch
}

func (c *controls) remove(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}

// complete hands an answer to request id; answers beyond what the request
// waits for, or for a request that ended, are dropped.
func (c *controls) complete(id uint64, r ctlReply) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.m[id]
	if p == nil || !p.from[r.from] {
		return
	}
	delete(p.from, r.from)
	select {
	case p.ch <- r:
	default:
	}
}

// Cluster is the cluster-wide side of an Exchange: the live nodes, the
// connections on every node, remote control of a connection wherever it
// is, and messages between nodes. Get it from Exchange.Cluster (or the
// adapters' Cluster). Its methods are safe for concurrent use.
type Cluster struct{ e *Exchange }

// Cluster returns the exchange's cluster operations. Free: no allocation
// beyond the small handle.
func (e *Exchange) Cluster() *Cluster { return &Cluster{e: e} }

// Nodes returns the live nodes of the cluster, this one first: those heard
// from within NodeExpiry. It reads the node's own table (no broker call).
func (c *Cluster) Nodes() []Node {
	e := c.e
	self := Node{ID: e.node, Addr: e.opts.Addr, Self: true, Conns: int(e.hub.conns.Load()), Namespaces: e.namespaceList(), Uptime: time.Since(e.started), Stats: e.Stats(), LastSeen: time.Now()}
	others := e.nodes.list()
	sort.Slice(others, func(i, j int) bool { return others[i].ID < others[j].ID })
	return append([]Node{self}, others...)
}

func (e *Exchange) namespaceList() []string {
	e.nsMu.Lock()
	defer e.nsMu.Unlock()
	return slices.Clone(e.namespaces)
}

// peers returns the ids of the other live nodes.
func (e *Exchange) peers() []string {
	var ids []string
	for _, n := range e.nodes.list() {
		ids = append(ids, n.ID)
	}
	return ids
}

// Conns lists the connections in namespace (every connection when empty)
// and, when room is not empty, in that room, on every live node: this
// node's from its own index, the others' by one request published on the
// broker and one answer per node. It waits for every live node until ctx's
// deadline (without one, SubscribeTimeout plus PublishTimeout); the nodes
// that did not answer are named in Presence.Missing. An answer is one
// broker message per node, so it is bounded by the broker's payload limit
// (NATS: 1 MB by default, about 20,000 connections).
func (c *Cluster) Conns(ctx context.Context, namespace, room string) (Presence, error) {
	e := c.e
	var p Presence
	p.Conns = e.hub.presence(e.node, namespace, room)
	err := e.request(ctx, envelope{event: opConns, namespace: namespace, room: room}, func(r ctlReply) bool {
		if list, ok := decodeConns(r.body, r.from); ok {
			p.Conns = append(p.Conns, list...)
		}
		return false
	}, &p.Missing)
	return p, err
}

// Count counts the connections Conns would list, at the same cost minus
// the lists: one request, one short answer per node.
func (c *Cluster) Count(ctx context.Context, namespace, room string) (n int, missing []string, err error) {
	e := c.e
	n = e.hub.countIn(namespace, room)
	err = e.request(ctx, envelope{event: opCount, namespace: namespace, room: room}, func(r ctlReply) bool {
		if v, k := binary.Uvarint(r.body); k > 0 {
			n += int(v)
		}
		return false
	}, &missing)
	return n, missing, err
}

// Disconnect closes the connection with id on whichever node holds it
// (neffos's Conn.Close runs there: the client and the server's handlers see
// what they would on one node). It returns ErrConnNotFound when every live
// node answered that it does not hold it, and ctx's error, naming the
// nodes that did not answer, when its deadline came first. Cost: nothing
// on the broker when this node holds it; otherwise one request and one
// answer per node.
func (c *Cluster) Disconnect(ctx context.Context, id string) error {
	e := c.e
	return e.control(ctx, envelope{event: opDisconnect, to: id})
}

// JoinRoom makes the connection with id join room in namespace, on
// whichever node holds it: neffos's server-side NSConn.JoinRoom runs there
// (it asks the client, and fires OnRoomJoin/OnRoomJoined). Errors and cost
// as Disconnect; the client's refusal comes back as an error.
func (c *Cluster) JoinRoom(ctx context.Context, id, namespace, room string) error {
	e := c.e
	return e.control(ctx, envelope{event: opJoin, to: id, namespace: namespace, room: room})
}

// LeaveRoom makes the connection with id leave room in namespace, on
// whichever node holds it (neffos's Room.Leave runs there). Errors and cost
// as Disconnect.
func (c *Cluster) LeaveRoom(ctx context.Context, id, namespace, room string) error {
	e := c.e
	return e.control(ctx, envelope{event: opLeave, to: id, namespace: namespace, room: room})
}

// Emit hands event and body to Options.OnNodeMessage on every other node,
// without waiting for them: one publish. Nodes without a handler ignore it.
func (c *Cluster) Emit(event string, body []byte) error {
	e := c.e
	if err := e.start(); err != nil {
		return err
	}
	_, err := e.publish(e.names.control(), &envelope{kind: kindControl, origin: e.node, id: e.ctls.seq.Add(1), event: opEmit, body: userBody(event, body)})
	return err
}

// Survey hands event and body to Options.OnNodeMessage on every other node
// and collects one reply per node: the handler's result, or its error. It
// waits for every live node until ctx's deadline (without one,
// SubscribeTimeout plus PublishTimeout); the nodes that did not answer are
// named in SurveyResult.Missing. Cost: one publish, one answer per node.
func (c *Cluster) Survey(ctx context.Context, event string, body []byte) (SurveyResult, error) {
	e := c.e
	res := SurveyResult{Replies: map[string][]byte{}, Errors: map[string]error{}}
	err := e.request(ctx, envelope{event: opSurvey, body: userBody(event, body)}, func(r ctlReply) bool {
		if r.err != nil {
			res.Errors[r.from] = r.err
		} else {
			res.Replies[r.from] = r.body
		}
		return false
	}, &res.Missing)
	return res, err
}

func userBody(event string, body []byte) []byte {
	return append(appendString(nil, event), body...)
}

// control runs a remote-control operation: here when this node holds the
// connection, otherwise on the node that answers that it did.
func (e *Exchange) control(ctx context.Context, env envelope) error {
	if err := e.start(); err != nil {
		return err
	}
	if e.hub.count(env.to) > 0 {
		found, err := e.operate(ctx, &env)
		if found || err != nil {
			return err
		}
	}
	var done bool
	var opErr error
	var missing []string
	err := e.request(ctx, env, func(r ctlReply) bool {
		if r.err != nil || len(r.body) > 0 && r.body[0] == 1 {
			done, opErr = true, r.err
			return true
		}
		return false
	}, &missing)
	switch {
	case done:
		return opErr
	case err != nil:
		return err
	}
	return fmt.Errorf("%w: %q", ErrConnNotFound, env.to)
}

// request publishes env as a control request to every node and passes each
// answer to take, until take returns true, every live node answered, or
// ctx is done (then the silent nodes are added to missing, and the error
// is ctx's, naming them).
func (e *Exchange) request(ctx context.Context, env envelope, take func(ctlReply) bool, missing *[]string) error {
	if err := e.start(); err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.opts.SubscribeTimeout+e.opts.PublishTimeout)
		defer cancel()
	}
	waiting := map[string]bool{}
	for _, id := range e.peers() {
		waiting[id] = true
	}
	if len(waiting) == 0 {
		return nil
	}
	id, ch := e.ctls.add(waiting)
	defer e.ctls.remove(id)
	env.kind, env.origin, env.id = kindControl, e.node, id
	if _, err := e.publish(e.names.control(), &env); err != nil {
		for n := range waiting {
			*missing = append(*missing, n)
		}
		sort.Strings(*missing)
		return err
	}
	for len(waiting) > 0 {
		select {
		case r := <-ch:
			if !waiting[r.from] {
				continue
			}
			delete(waiting, r.from)
			if take(r) {
				return nil
			}
		case <-ctx.Done():
			for n := range waiting {
				*missing = append(*missing, n)
			}
			sort.Strings(*missing)
			return fmt.Errorf("%w (no answer from %d nodes: %v)", ctx.Err(), len(*missing), *missing)
		case <-e.done:
			return ErrClosed
		}
	}
	return nil
}

// takeControl queues another node's request for the control workers; a
// full queue drops it (the asker sees this node as not answering).
func (e *Exchange) takeControl(env envelope) {
	if !e.ctls.first(env.origin, env.id) {
		return // the same request through a second broker
	}
	select {
	case e.ctlIn <- env:
	default:
		e.rep.report(fmt.Errorf("%w: control request %s from node %s dropped: %d waiting", ErrPublish, env.event, env.origin, ctlQueue))
	}
}

// serveControls runs other nodes' requests, on ctlWorkers goroutines.
func (e *Exchange) serveControls(done <-chan struct{}) {
	consume(done, e.ctlIn, func(env envelope) {
		reply := envelope{kind: kindControlReply, origin: e.node, id: env.id}
		switch env.event {
		case opConns:
			reply.body = encodeConns(e.hub.presence(e.node, env.namespace, env.room))
		case opCount:
			reply.body = binary.AppendUvarint(nil, uint64(e.hub.countIn(env.namespace, env.room)))
		case opDisconnect, opJoin, opLeave:
			ctx, cancel := context.WithTimeout(context.Background(), e.opts.SubscribeTimeout)
			found, err := e.operate(ctx, &env)
			cancel()
			reply.body = []byte{0}
			if found {
				reply.body[0] = 1
			}
			if err != nil {
				reply.flags |= flagError
				reply.errText = err.Error()
			}
		case opEmit, opSurvey:
			r := reader{b: env.body}
			event := r.string()
			if r.err != "" || e.opts.OnNodeMessage == nil {
				if env.event == opEmit {
					return
				}
				reply.flags |= flagError
				reply.errText = errNoHandler.Error()
				break
			}
			out, err := e.opts.OnNodeMessage(env.origin, event, r.b)
			if env.event == opEmit {
				return
			}
			reply.body = out
			if err != nil {
				reply.flags |= flagError
				reply.errText = err.Error()
			}
		default:
			e.decodeErrors.Add(1)
			e.rep.report(fmt.Errorf("%w: unknown cluster operation %q from node %s", ErrMalformed, env.event, env.origin))
			return
		}
		e.pipe.push(e.names.node(env.origin), reply, false)
	})
}

// operate runs a remote-control operation on this node's connections with
// env.to; found reports whether it holds one.
func (e *Exchange) operate(ctx context.Context, env *envelope) (found bool, err error) {
	conns := e.hub.connsOf(env.to)
	for _, c := range conns {
		switch env.event {
		case opDisconnect:
			c.Close()
		case opJoin:
			ns := c.Namespace(env.namespace)
			if ns == nil {
				return true, fmt.Errorf("%w: %q is not in namespace %q", ErrConnNotFound, env.to, env.namespace)
			}
			waitOutsideHandler(ctx, c)
			if _, err := ns.JoinRoom(ctx, env.room); err != nil {
				return true, err
			}
		case opLeave:
			ns := c.Namespace(env.namespace)
			if ns == nil {
				return true, fmt.Errorf("%w: %q is not in namespace %q", ErrConnNotFound, env.to, env.namespace)
			}
			if r := ns.Room(env.room); r != nil {
				waitOutsideHandler(ctx, c)
				if err := r.Leave(ctx); err != nil {
					return true, err
				}
			}
		}
	}
	return len(conns) > 0, nil
}

// controlReply hands an answer read on this node's channel to its request.
func (e *Exchange) controlReply(env *envelope) {
	r := ctlReply{from: env.origin, body: env.body}
	if env.flags&flagError != 0 {
		r.err = remoteError{node: env.origin, text: env.errText}
	}
	e.ctls.complete(env.id, r)
}

// remoteError is an error another node's operation returned.
type remoteError struct{ node, text string }

func (r remoteError) Error() string { return "node " + r.node + ": " + r.text }

// Is makes a remote "connection not found" match ErrConnNotFound.
func (r remoteError) Is(target error) bool {
	return target == ErrConnNotFound && strings.HasPrefix(r.text, ErrConnNotFound.Error())
}

// presence lists this node's connections in namespace (all when empty) and
// room (all of the namespace when empty).
func (h *hub) presence(node, namespace, room string) []Conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []Conn
	h.matchingLocked(namespace, room, func(p *peer) {
		c := Conn{ID: p.id, Node: node, Rooms: make(map[string][]string, len(p.rooms))}
		for ns, rooms := range p.rooms {
			list := make([]string, 0, len(rooms))
			for r := range rooms {
				list = append(list, r)
			}
			sort.Strings(list)
			c.Rooms[ns] = list
		}
		out = append(out, c)
	})
	return out
}

// countIn counts what presence would list, without building the list.
func (h *hub) countIn(namespace, room string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := 0
	h.matchingLocked(namespace, room, func(*peer) { n++ })
	return n
}

// matchingLocked calls fn for each connection in namespace and room (see
// presence). h.mu is held, read or write.
func (h *hub) matchingLocked(namespace, room string, fn func(*peer)) {
	for _, p := range h.peers {
		if namespace != "" {
			rooms, in := p.rooms[namespace]
			if !in {
				continue
			}
			if _, inRoom := rooms[room]; room != "" && !inRoom {
				continue
			}
		}
		fn(p)
	}
}

// connsOf returns the local connections with id.
func (h *hub) connsOf(id string) []*neffos.Conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*neffos.Conn, 0, len(h.byID[id]))
	for _, p := range h.byID[id] {
		out = append(out, p.c)
	}
	return out
}

func encodeConns(list []Conn) []byte {
	b := binary.AppendUvarint(nil, uint64(len(list)))
	for _, c := range list {
		b = appendString(b, c.ID)
		b = binary.AppendUvarint(b, uint64(len(c.Rooms)))
		for ns, rooms := range c.Rooms {
			b = appendString(b, ns)
			b = binary.AppendUvarint(b, uint64(len(rooms)))
			for _, r := range rooms {
				b = appendString(b, r)
			}
		}
	}
	return b
}

func decodeConns(b []byte, node string) ([]Conn, bool) {
	r := reader{b: b}
	n := r.uvarint()
	if n > uint64(len(b)) {
		return nil, false
	}
	out := make([]Conn, 0, n)
	for i := uint64(0); i < n && r.err == ""; i++ {
		c := Conn{ID: r.string(), Node: node, Rooms: map[string][]string{}}
		k := r.uvarint()
		for j := uint64(0); j < k && r.err == ""; j++ {
			ns := r.string()
			m := r.uvarint()
			if m > uint64(len(b)) {
				return nil, false
			}
			rooms := make([]string, 0, m)
			for l := uint64(0); l < m && r.err == ""; l++ {
				rooms = append(rooms, r.string())
			}
			c.Rooms[ns] = rooms
		}
		out = append(out, c)
	}
	return out, r.err == ""
}

// nodeInfo encodes this node's heartbeat info.
func (e *Exchange) nodeInfo() []byte {
	s := e.Stats()
	b := appendString(nil, e.opts.Addr)
	b = binary.AppendUvarint(b, ageMillis(time.Since(e.started)))
	nss := e.namespaceList()
	b = binary.AppendUvarint(b, uint64(len(nss)))
	for _, ns := range nss {
		b = appendString(b, ns)
	}
	counters, gauges := statFields(&s)
	b = binary.AppendUvarint(b, uint64(len(counters)))
	for _, f := range counters {
		b = binary.AppendUvarint(b, *f)
	}
	b = binary.AppendUvarint(b, uint64(len(gauges)))
	for _, f := range gauges {
		b = binary.AppendUvarint(b, uint64(max(*f, 0)))
	}
	return b
}

// decodeNodeInfo parses another node's heartbeat info.
func decodeNodeInfo(id string, b []byte, now time.Time) (Node, bool) {
	r := reader{b: b}
	n := Node{ID: id, Addr: r.string(), LastSeen: now}
	n.Uptime = time.Duration(r.uvarint()) * time.Millisecond
	k := r.uvarint()
	if k > uint64(len(b)) {
		return n, false
	}
	for i := uint64(0); i < k && r.err == ""; i++ {
		n.Namespaces = append(n.Namespaces, r.string())
	}
	counters, gauges := statFields(&n.Stats)
	m := r.uvarint()
	for i := uint64(0); i < m && r.err == ""; i++ {
		v := r.uvarint()
		if int(i) < len(counters) {
			*counters[i] = v
		}
	}
	m = r.uvarint()
	for i := uint64(0); i < m && r.err == ""; i++ {
		v := r.uvarint()
		if int(i) < len(gauges) {
			*gauges[i] = int(min(v, 1<<62))
		}
	}
	n.Conns = n.Stats.Conns
	return n, r.err == ""
}

// statFields lists Stats' counters and gauges in their wire order (new
// fields go last in each list; older nodes ignore what they do not know).
func statFields(s *Stats) (counters []*uint64, gauges []*int) {
	counters = []*uint64{&s.Published, &s.PublishErrors, &s.Received, &s.Delivered, &s.Dropped, &s.DecodeErrors,
		&s.Duplicates, &s.Missed, &s.Repaired, &s.Resent, &s.ReportsDropped}
	gauges = []*int{&s.Conns, &s.Queued, &s.Outbound, &s.Subscriptions, &s.PendingAsks, &s.Held, &s.Retained, &s.RetainedBytes}
	return counters, gauges
}

var errNoHandler = errors.New("scaleout: no OnNodeMessage handler on that node")
