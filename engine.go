package scaleout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kataras/neffos"
)

// Exchange is the engine behind every exchange of this module: it does the
// neffos side once, for any Broker.
//
// Per node it holds one broker subscription per namespace (taken in Init),
// one per node channel (Ask replies) and one per distinct connected client
// id (messages with To, Asks with To), all on the broker's shared
// connections. A broadcast is published once and read once per node, decoded
// once, then queued to each local connection that is in its namespace (and
// room). The publishing node serves its own clients directly and ignores its
// echo from the broker.
//
// # Concurrency
//
// All methods are safe for concurrent use. Every local connection has a
// bounded queue (Options.QueueSize) drained by a goroutine that exists only
// while the queue is not empty; a connection that stops reading loses the
// messages that do not fit in its queue, and no other connection waits for
// it. Receiving from the broker never blocks on a websocket write.
//
// # Delivery
//
// While the broker is healthy every message reaches every matching client
// exactly once. Across a broker outage delivery is at most once: messages
// published while a node cannot reach the broker are delivered to that
// node's own clients only, and Publish returns false.
type Exchange struct {
	b     Broker
	opts  Options
	names names
	node  string // this node's id: 16 hex digits

	startOnce sync.Once
	startErr  error
	inited    atomic.Bool

	mu     sync.RWMutex // guards conns, byID, byPtr, closed
	conns  map[*neffos.Conn]*peer
	byID   map[string][]*peer
	byPtr  map[string]*peer
	closed bool

	subMu sync.Mutex
	subs  map[string]*subState
	subQ  []string      // channels whose subscription must be brought in line with refs
	subCh chan struct{} // wakes the subscriber goroutine

	present sync.Map // client channel -> time.Time until which it is known subscribed

	jobMu sync.Mutex
	jobs  []fanoutJob   // local deliveries waiting for the dispatcher
	jobCh chan struct{} // wakes the dispatcher

	askMu  sync.Mutex
	asks   map[uint64]*pendingAsk
	askSeq atomic.Uint64

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
	bg        sync.WaitGroup // long-lived goroutines
	drains    sync.WaitGroup // per-connection queue drainers

	published, publishErrors, received, delivered, dropped, decodeErrors atomic.Uint64
}

// pendingAsk is a Server.Ask waiting for its reply.
type pendingAsk struct {
	reply    chan neffos.Message // first reply wins
	notHere  int                 // not-here answers so far (guarded by askMu)
	expected int                 // not-here answers that mean nobody holds To; 0: not counting
	nowhere  chan struct{}       // closed when notHere reaches expected
}

type subState struct {
	refs   int
	active bool // subscribed on the broker (or being subscribed)
	queued bool // in subQ
}

// peer is a local websocket connection and its outbound queue.
type peer struct {
	c  *neffos.Conn
	id string

	mu       sync.Mutex
	queue    []*neffos.Message
	running  bool
	dropping bool
	lazyNS   map[string]struct{} // namespaces subscribed for this conn when Init was not called
	ready    map[string]struct{} // namespaces neffos reported connected (Subscribe)
	held     []*neffos.Message   // messages for a namespace not ready yet
}

const sweepInterval = time.Second

// presenceTTL is how long a client channel that had a subscriber is
// published to without counting receivers again (brokers where counting
// costs a round trip: NATS). A client that just connected is not in the
// cache, so its first messages still take the counted path and its
// fallback.
const presenceTTL = 5 * time.Second

// New returns an engine on top of b. It starts b and subscribes lazily, on
// the first call neffos makes (Init, OnConnect, Publish or Ask), so adapters
// can still change Options.Prefix until then. The engine owns b: Close
// closes it.
func New(b Broker, opts Options) *Exchange {
	if opts.Prefix == "" {
		opts.Prefix = "neffos"
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = 2 * time.Second
	}
	if opts.SubscribeTimeout <= 0 {
		opts.SubscribeTimeout = 2 * time.Second
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 16384
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	return &Exchange{
		b:     b,
		opts:  opts,
		names: names{prefix: prefixName(opts.Prefix)},
		node:  hex.EncodeToString(id[:]),
		conns: make(map[*neffos.Conn]*peer),
		byID:  make(map[string][]*peer),
		byPtr: make(map[string]*peer),
		subs:  make(map[string]*subState),
		subCh: make(chan struct{}, 1),
		jobCh: make(chan struct{}, 1),
		asks:  make(map[uint64]*pendingAsk),
		done:  make(chan struct{}),
	}
}

// SetPrefix sets Options.Prefix and starts the engine with it, for adapters
// whose prefix may change after construction (nats's SubjectPrefix). Once
// the engine started (neffos's first call into it, or SetPrefix) it returns
// an error wrapping ErrStarted.
func (e *Exchange) SetPrefix(prefix string) error {
	started := true
	e.startOnce.Do(func() { started = false })
	if started {
		return fmt.Errorf("%w: SetPrefix(%q)", ErrStarted, prefix)
	}
	// startOnce is spent: start for real now with the new prefix.
	if prefix == "" {
		prefix = "neffos"
	}
	e.opts.Prefix = prefix
	e.names = names{prefix: prefixName(prefix)}
	e.startErr = e.doStart()
	return e.startErr
}

// NodeID returns this node's id, as carried in envelopes (16 hex digits).
func (e *Exchange) NodeID() string { return e.node }

func (e *Exchange) isClosed() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

func (e *Exchange) start() error {
	e.startOnce.Do(func() { e.startErr = e.doStart() })
	return e.startErr
}

func (e *Exchange) doStart() error {
	if err := e.b.Start(e.deliver, e.report); err != nil {
		return err
	}
	e.bg.Add(3)
	go e.subscriber()
	go e.sweeper()
	go e.dispatcher()
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.SubscribeTimeout)
	defer cancel()
	e.acquire(ctx, e.names.node(e.node), true)
	return nil
}

// Init subscribes the channel of every namespace neffos declares, once for
// this node. neffos calls it from Server.UseStackExchange. Subscribing here,
// not on a client's namespace connect, means a broadcast sent the moment a
// client's Connect returns reaches it.
func (e *Exchange) Init(namespaces neffos.Namespaces) error {
	if err := e.start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.SubscribeTimeout)
	defer cancel()
	for ns := range namespaces {
		// A failure is reported, not returned: the broker subscribes the
		// channel again on reconnect, and the node serves its local clients
		// meanwhile.
		_ = e.acquire(ctx, e.names.namespace(ns), true)
	}
	e.inited.Store(true)
	return nil
}

// OnConnect registers c as a local connection and queues the subscription
// of its id's channel (one broker subscription per distinct id, on the
// shared broker connection), so messages with To and Asks for it reach this
// node. Called by neffos before the server's OnConnect; it returns at once
// and never fails the connection because of the broker: during an outage
// the client is served locally. Until the broker confirmed the
// subscription (one round trip), a message with To published on another
// node finds no subscriber on the id's channel and is re-published on the
// namespace's channel, which this node subscribed in Init.
func (e *Exchange) OnConnect(c *neffos.Conn) error {
	if err := e.start(); err != nil {
		return err
	}
	p := &peer{c: c, id: c.ID(), ready: make(map[string]struct{})}
	if c.Namespace("") != nil {
		// A native-only connection is connected to "" from the start and
		// neffos never calls Subscribe for it.
		p.ready[""] = struct{}{}
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	if _, dup := e.conns[c]; dup {
		e.mu.Unlock()
		return nil
	}
	e.conns[c] = p
	e.byID[p.id] = append(e.byID[p.id], p)
	e.byPtr[fmt.Sprintf("%p", c)] = p
	e.mu.Unlock()

	_ = e.acquire(context.Background(), e.names.conn(p.id), false)
	return nil
}

// OnDisconnect releases everything the exchange holds for c. It never blocks
// on the broker: unsubscribing happens in the background.
func (e *Exchange) OnDisconnect(c *neffos.Conn) {
	e.mu.Lock()
	p := e.removeLocked(c)
	e.mu.Unlock()
	if p == nil {
		return
	}
	e.release(e.names.conn(p.id))
	p.mu.Lock()
	lazy := p.lazyNS
	p.lazyNS = nil
	p.queue = nil
	p.mu.Unlock()
	for ns := range lazy {
		e.release(e.names.namespace(ns))
	}
}

func (e *Exchange) removeLocked(c *neffos.Conn) *peer {
	p := e.conns[c]
	if p == nil {
		return nil
	}
	delete(e.conns, c)
	delete(e.byPtr, fmt.Sprintf("%p", c))
	list := e.byID[p.id]
	for i, q := range list {
		if q == p {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(e.byID, p.id)
	} else {
		e.byID[p.id] = list
	}
	return p
}

// Subscribe is called by neffos after a client connected to namespace and
// its connect reply was written. Messages for that namespace that arrived in
// between are written now, in order. When Init ran
// (Server.UseStackExchange) the namespace channel is already subscribed;
// otherwise this subscribes it for the node, reference-counted.
func (e *Exchange) Subscribe(c *neffos.Conn, namespace string) {
	if e.start() != nil {
		return
	}
	e.mu.RLock()
	p := e.conns[c]
	if p == nil || e.closed {
		e.mu.RUnlock()
		return
	}
	var dropped int
	p.mu.Lock()
	p.ready[namespace] = struct{}{}
	keep := p.held[:0]
	for _, m := range p.held {
		if m.Namespace != namespace {
			keep = append(keep, m)
		} else if queued, _ := e.enqueueLocked(p, m); !queued {
			dropped++
		}
	}
	clear(p.held[len(keep):])
	p.held = keep
	lazy := false
	if _, ok := p.lazyNS[namespace]; !ok && !e.inited.Load() {
		if p.lazyNS == nil {
			p.lazyNS = make(map[string]struct{})
		}
		p.lazyNS[namespace] = struct{}{}
		lazy = true
	}
	p.mu.Unlock()
	e.mu.RUnlock()
	e.dropped.Add(uint64(dropped))
	if lazy {
		_ = e.acquire(context.Background(), e.names.namespace(namespace), false)
	}
}

// Unsubscribe is called by neffos after a client left namespace; it undoes
// Subscribe.
func (e *Exchange) Unsubscribe(c *neffos.Conn, namespace string) {
	e.mu.RLock()
	p := e.conns[c]
	e.mu.RUnlock()
	if p == nil {
		return
	}
	p.mu.Lock()
	_, ok := p.lazyNS[namespace]
	delete(p.lazyNS, namespace)
	delete(p.ready, namespace)
	keep := p.held[:0]
	for _, m := range p.held {
		if m.Namespace != namespace {
			keep = append(keep, m)
		}
	}
	clear(p.held[len(keep):])
	p.held = keep
	p.mu.Unlock()
	if ok {
		e.release(e.names.namespace(namespace))
	}
}

// Publish delivers msgs to this node's matching clients at once and
// publishes each message to the broker once (one PUBLISH per message,
// whatever the number of clients). It returns false when a publish failed;
// the cause goes to Options.ErrorHandler wrapped in ErrPublish. Each publish
// is bounded by Options.PublishTimeout.
func (e *Exchange) Publish(msgs []neffos.Message) bool {
	if e.start() != nil || e.isClosed() {
		return false
	}
	ok := true
	for i := range msgs {
		if !e.publishOne(&msgs[i]) {
			ok = false
		}
	}
	return ok
}

func (e *Exchange) publishOne(m *neffos.Message) bool {
	env := envelope{kind: kindBroadcast, origin: e.node}
	fillEnvelope(&env, m)
	exclConn, exclID := e.excluded(m)
	env.exclude = exclID // other nodes skip every connection with this id

	// Here, Broadcast(conn/nsConn) skips that exact connection and
	// Exclude(id) every connection with the id, as neffos does.
	local := fanoutJob{m: messageOf(&env), to: env.to, exclConn: exclConn}
	if exclConn == nil {
		local.exclID = exclID
	}
	e.dispatch(local)

	if env.to == "" {
		_, err := e.publish(e.names.namespace(env.namespace), &env)
		return err == nil
	}
	channel := e.names.conn(env.to)
	var n int
	var err error
	if e.recentlyPresent(channel) {
		n, err = e.publish(channel, &env) // no need to count: it has a subscriber
	} else if n, err = e.publishCounted(channel, &env); err == nil && n > 0 && e.counting() {
		e.present.Store(channel, time.Now().Add(presenceTTL))
	}
	if err == nil && n == 0 {
		// No node has subscribed the id's channel (yet): every node reads
		// the namespace's channel and picks the client by id.
		_, err = e.publish(e.names.namespace(env.namespace), &env)
	}
	return err == nil
}

func (e *Exchange) publish(channel string, env *envelope) (int, error) {
	return e.publishVia(e.b.Publish, channel, env)
}

// publishCounted publishes on a client's channel, counting receivers when
// the broker can (CountingPublisher) and Publish cannot.
func (e *Exchange) publishCounted(channel string, env *envelope) (int, error) {
	if cp, ok := e.b.(CountingPublisher); ok {
		return e.publishVia(cp.PublishCounted, channel, env)
	}
	return e.publish(channel, env)
}

func (e *Exchange) publishVia(pub func(context.Context, string, []byte) (int, error), channel string, env *envelope) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.PublishTimeout)
	defer cancel()
	n, err := pub(ctx, channel, encodeEnvelope(env))
	if err != nil && e.isClosed() {
		return 0, ErrClosed // the broker went away with Close
	}
	if err != nil {
		e.publishErrors.Add(1)
		err = fmt.Errorf("%w: %s: %w", ErrPublish, channel, err)
		e.report(err)
		return 0, err
	}
	e.published.Add(1)
	return n, nil
}

// counting reports whether the broker counts receivers only on request
// (CountingPublisher), at a cost.
func (e *Exchange) counting() bool {
	_, ok := e.b.(CountingPublisher)
	return ok
}

func (e *Exchange) recentlyPresent(channel string) bool {
	if !e.counting() {
		return false // Publish counts by itself
	}
	v, ok := e.present.Load(channel)
	return ok && time.Now().Before(v.(time.Time))
}

// excluded resolves who a broadcast must skip: the exact local connection
// (Broadcast(conn) / Broadcast(nsConn), carried by neffos in FromExplicit)
// and the connection id that other nodes must skip.
func (e *Exchange) excluded(m *neffos.Message) (*neffos.Conn, string) {
	if from := fromOf(m); from != "" {
		return nil, from
	}
	if m.FromExplicit == "" {
		return nil, ""
	}
	// FromExplicit is "neffos(0x<server>(<id><%p of conn>))".
	s := strings.TrimSuffix(m.FromExplicit, "))")
	if i := strings.LastIndex(s, "0x"); i >= 0 {
		e.mu.RLock()
		p := e.byPtr[s[i:]]
		e.mu.RUnlock()
		if p != nil && p.c.Is(m.FromExplicit) {
			return p.c, p.id
		}
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	for c, p := range e.conns {
		if c.Is(m.FromExplicit) {
			return c, p.id
		}
	}
	return nil, ""
}

// fanoutJob is one message for this node's connections.
type fanoutJob struct {
	m        *neffos.Message
	to       string
	exclConn *neffos.Conn
	exclID   string
	notHere  string // when nobody here gets it: node to tell (an ask probe)
	askID    uint64
}

// dispatch hands j to the dispatcher goroutine and returns at once.
// Publish may be called by a neffos event handler that holds a
// connection's lock (OnNamespaceDisconnect, OnRoomLeft); fan-out asks every
// connection for its namespaces and rooms, so it must not run on the
// caller's goroutine, nor on the broker's receive loop.
func (e *Exchange) dispatch(j fanoutJob) {
	e.jobMu.Lock()
	e.jobs = append(e.jobs, j)
	e.jobMu.Unlock()
	select {
	case e.jobCh <- struct{}{}:
	default:
	}
}

// dispatcher runs every local fan-out of this node, in arrival order.
func (e *Exchange) dispatcher() {
	defer e.bg.Done()
	var batch []fanoutJob
	for {
		select {
		case <-e.done:
			return
		case <-e.jobCh:
		}
		for {
			e.jobMu.Lock()
			batch, e.jobs = e.jobs, batch[:0]
			e.jobMu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i, j := range batch {
				n := e.fanout(j.m, j.to, j.exclConn, j.exclID)
				if n == 0 && j.notHere != "" {
					e.goPublish(e.names.node(j.notHere), &envelope{kind: kindNotHere, origin: e.node, id: j.askID})
				}
				batch[i] = fanoutJob{}
			}
		}
	}
}

// fanout queues m to every local connection that should get it. It never
// blocks on a connection. It returns how many connections it queued to.
func (e *Exchange) fanout(m *neffos.Message, to string, exclConn *neffos.Conn, exclID string) int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return 0
	}
	n := 0
	if to != "" {
		for _, p := range e.byID[to] {
			if p.c != exclConn && wants(p.c, m) && e.push(p, m) {
				n++
			}
		}
		return n
	}
	for c, p := range e.conns {
		if c == exclConn || (exclID != "" && p.id == exclID) || !wants(c, m) {
			continue
		}
		if e.push(p, m) {
			n++
		}
	}
	return n
}

// wants reports whether c is connected to m's namespace and, when m has a
// room, joined to it. neffos checks the same again when writing.
func wants(c *neffos.Conn, m *neffos.Message) bool {
	ns := c.Namespace(m.Namespace)
	if ns == nil {
		return false
	}
	return m.Room == "" || ns.Room(m.Room) != nil
}

// push queues m for p. Called with e.mu read-locked, so Close cannot start
// waiting for drains while a drain is being added.
func (e *Exchange) push(p *peer, m *neffos.Message) bool {
	p.mu.Lock()
	var ok, report bool
	if _, ready := p.ready[m.Namespace]; ready {
		ok, report = e.enqueueLocked(p, m)
	} else if len(p.held) < e.opts.QueueSize {
		// neffos registers a namespace on the connection before it writes
		// the connect reply, and tells the exchange (Subscribe) right after.
		// A message written in between would reach the client before its
		// Connect returned, which deadlocks a neffos client; hold it until
		// Subscribe.
		p.held = append(p.held, m)
		ok = true
	} else {
		report = !p.dropping
		p.dropping = true
	}
	p.mu.Unlock()
	if !ok {
		e.dropped.Add(1)
		if report {
			e.report(fmt.Errorf("%w: connection %q", ErrSlowConsumer, p.id))
		}
	}
	return ok
}

// enqueueLocked queues m for p's drain goroutine, starting it if needed.
// Called with p.mu locked and e.mu read-locked. It reports whether m was
// queued, and whether a drop must be reported.
func (e *Exchange) enqueueLocked(p *peer, m *neffos.Message) (queued, report bool) {
	if len(p.queue) >= e.opts.QueueSize {
		report = !p.dropping
		p.dropping = true
		return false, report
	}
	p.queue = append(p.queue, m)
	if !p.running {
		p.running = true
		e.drains.Add(1)
		go e.drain(p)
	}
	return true, false
}

func (e *Exchange) drain(p *peer) {
	defer e.drains.Done()
	var batch []*neffos.Message
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.running = false
			p.dropping = false
			p.mu.Unlock()
			return
		}
		batch, p.queue = p.queue, batch[:0]
		p.mu.Unlock()
		for i, m := range batch {
			select {
			case <-e.done:
				return
			default:
			}
			if p.c.Write(*m) {
				e.delivered.Add(1)
			}
			batch[i] = nil
		}
	}
}

// deliver is the broker's receive callback: decode once, then fan out.
func (e *Exchange) deliver(channel string, payload []byte) {
	e.received.Add(1)
	env, err := decodeEnvelope(payload)
	if err != nil {
		e.decodeErrors.Add(1)
		e.report(fmt.Errorf("channel %s: %w", channel, err))
		return
	}
	if env.origin == e.node {
		return // own echo: local clients were served directly.
	}
	switch env.kind {
	case kindBroadcast:
		e.dispatch(fanoutJob{m: messageOf(&env), to: env.to, exclID: env.exclude})
	case kindAsk:
		j := fanoutJob{m: questionOf(&env, askToken(env.origin, env.id)), to: env.to, exclID: env.exclude}
		if env.flags&flagProbe != 0 {
			j.notHere, j.askID = env.origin, env.id
		}
		e.dispatch(j)
	case kindReply:
		e.complete(env.id, *messageOf(&env))
	case kindNotHere:
		e.notHere(env.id)
	}
}

// goPublish publishes from a new goroutine: the receive path must not wait
// for the broker (an in-process broker delivers from inside Publish).
func (e *Exchange) goPublish(channel string, env *envelope) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return
	}
	e.drains.Add(1)
	go func() {
		defer e.drains.Done()
		_, _ = e.publish(channel, env)
	}()
}

// Ask sends msg to its To client, or to every client of msg.Namespace when
// To is empty, on whichever node holds them, and returns the first reply.
// neffos's token is not used: the question carries a token of this
// exchange's (node id + ask id), and the reply comes back on this node's own
// channel, on the broker connection the node already has. When To is a
// client no node holds, Ask returns ErrConnNotFound at once (for brokers
// that count receivers). The wait is bounded by ctx.
func (e *Exchange) Ask(ctx context.Context, msg neffos.Message, _ string) (neffos.Message, error) {
	if err := e.start(); err != nil {
		return neffos.Message{}, err
	}
	if e.isClosed() {
		return neffos.Message{}, ErrClosed
	}
	if ctx == nil {
		ctx = context.Background()
	}
	id := e.askSeq.Add(1)
	pa := &pendingAsk{reply: make(chan neffos.Message, 1), nowhere: make(chan struct{})}
	e.askMu.Lock()
	if e.asks == nil {
		e.askMu.Unlock()
		return neffos.Message{}, ErrClosed
	}
	e.asks[id] = pa
	e.askMu.Unlock()
	defer func() {
		e.askMu.Lock()
		if e.asks != nil {
			delete(e.asks, id)
		}
		e.askMu.Unlock()
	}()

	env := envelope{kind: kindAsk, origin: e.node, id: id}
	fillEnvelope(&env, &msg)
	_, env.exclude = e.excluded(&msg)
	local := 0
	if env.to != "" {
		e.mu.RLock()
		local = len(e.byID[env.to])
		e.mu.RUnlock()
	}
	e.dispatch(fanoutJob{m: questionOf(&env, askToken(e.node, id)), to: env.to, exclID: env.exclude})
	var graceC <-chan time.Time // fires when a probe with uncounted nodes gave up
	switch {
	case env.to == "":
		if _, err := e.publish(e.names.namespace(env.namespace), &env); err != nil && local == 0 {
			return neffos.Message{}, err
		}
	case local == 0:
		n, err := e.publishCounted(e.names.conn(env.to), &env)
		if err != nil {
			return neffos.Message{}, err
		}
		if n == 0 {
			// Nobody subscribes the id's channel: the client is unknown, or
			// its node has not finished subscribing it. Ask every node; each
			// one without the client answers not-here.
			env.flags |= flagProbe
			m, err := e.publish(e.names.namespace(env.namespace), &env)
			if err != nil {
				return neffos.Message{}, err
			}
			// m counts this node too. When the broker cannot count (m < 0)
			// there is no telling when every node answered: a client that
			// exists but is still being subscribed answers within
			// SubscribeTimeout, so wait that long at most.
			if m < 0 {
				grace := time.NewTimer(e.opts.SubscribeTimeout)
				defer grace.Stop()
				graceC = grace.C
				break
			}
			if m <= 1 {
				return neffos.Message{}, fmt.Errorf("%w: %q", ErrConnNotFound, env.to)
			}
			e.askMu.Lock()
			pa.expected = m - 1
			if pa.notHere >= pa.expected {
				close(pa.nowhere)
			}
			e.askMu.Unlock()
		}
	}

	select {
	case r := <-pa.reply:
		return r, r.Err
	case <-pa.nowhere:
		return neffos.Message{}, fmt.Errorf("%w: %q", ErrConnNotFound, env.to)
	case <-graceC:
		return neffos.Message{}, fmt.Errorf("%w: %q", ErrConnNotFound, env.to)
	case <-ctx.Done():
		return neffos.Message{}, ctx.Err()
	case <-e.done:
		return neffos.Message{}, ErrClosed
	}
}

// NotifyAsk is called by neffos with a client's reply to a question this
// module delivered. The reply goes to the asking node's channel, or straight
// to the waiting Ask when that node is this one. It returns ErrUnknownToken
// for tokens this module did not issue.
func (e *Exchange) NotifyAsk(msg neffos.Message, token string) error {
	node, id, ok := parseAskToken(token)
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownToken, token)
	}
	env := envelope{kind: kindReply, origin: e.node, id: id}
	fillEnvelope(&env, &msg)
	env.to = ""
	if node == e.node {
		e.complete(id, *messageOf(&env))
		return nil
	}
	if err := e.start(); err != nil {
		return err
	}
	_, err := e.publish(e.names.node(node), &env)
	return err
}

func (e *Exchange) complete(id uint64, reply neffos.Message) {
	e.askMu.Lock()
	pa := e.asks[id]
	e.askMu.Unlock()
	if pa == nil {
		return // answered already (first reply wins), timed out, or not ours.
	}
	select {
	case pa.reply <- reply:
	default:
	}
}

// notHere counts a node's answer that it does not hold an ask's To client.
func (e *Exchange) notHere(id uint64) {
	e.askMu.Lock()
	defer e.askMu.Unlock()
	pa := e.asks[id]
	if pa == nil {
		return
	}
	pa.notHere++
	if pa.expected > 0 && pa.notHere == pa.expected {
		close(pa.nowhere)
	}
}

// Stats returns the exchange's counters.
func (e *Exchange) Stats() Stats {
	s := Stats{
		Published:     e.published.Load(),
		PublishErrors: e.publishErrors.Load(),
		Received:      e.received.Load(),
		Delivered:     e.delivered.Load(),
		Dropped:       e.dropped.Load(),
		DecodeErrors:  e.decodeErrors.Load(),
	}
	e.mu.RLock()
	s.Conns = len(e.conns)
	e.mu.RUnlock()
	e.subMu.Lock()
	s.Subscriptions = len(e.subs)
	e.subMu.Unlock()
	e.askMu.Lock()
	s.PendingAsks = len(e.asks)
	e.askMu.Unlock()
	return s
}

// BrokerConns implements Inspector.
func (e *Exchange) BrokerConns(ctx context.Context) (int, error) {
	bi, ok := e.b.(BrokerInspector)
	if !ok {
		return 0, fmt.Errorf("scaleout: broker connection count: %w", errors.ErrUnsupported)
	}
	return bi.Conns(ctx)
}

// NamespaceSubscribers implements Inspector.
func (e *Exchange) NamespaceSubscribers(ctx context.Context, namespace string) (int, error) {
	bi, ok := e.b.(BrokerInspector)
	if !ok {
		return 0, fmt.Errorf("scaleout: subscriber count: %w", errors.ErrUnsupported)
	}
	return bi.Subscribers(ctx, e.names.namespace(namespace))
}

// ChannelOf returns the broker channel of a namespace, for tools that look
// at the broker directly.
func (e *Exchange) ChannelOf(namespace string) string { return e.names.namespace(namespace) }

// Close stops the engine's goroutines, fails pending Asks with ErrClosed and
// closes the broker. Messages still queued for clients are discarded. It is
// idempotent; later calls return the first call's result.
func (e *Exchange) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		e.conns = map[*neffos.Conn]*peer{}
		e.byID = map[string][]*peer{}
		e.byPtr = map[string]*peer{}
		e.mu.Unlock()
		close(e.done)

		e.askMu.Lock()
		e.asks = nil
		e.askMu.Unlock()

		started := true
		e.startOnce.Do(func() { started = false; e.startErr = ErrClosed })
		if started && e.startErr == nil {
			e.bg.Wait()
		}
		e.closeErr = e.b.Close()
		waitTimeout(&e.drains, e.opts.PublishTimeout)
	})
	return e.closeErr
}

// waitTimeout waits for wg at most d. A drain blocked in a socket write to a
// client that stopped reading returns when neffos closes that connection.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

func (e *Exchange) report(err error) {
	if e.opts.ErrorHandler != nil {
		e.opts.ErrorHandler(err)
	}
	if e.opts.Logger != nil {
		e.opts.Logger.Warn("scaleout", "node", e.node, "err", err)
	}
}

// acquire takes a reference on channel. With wait, the first reference
// subscribes it before acquire returns (namespaces in Init, the node
// channel); otherwise the subscriber goroutine subscribes it in the
// background, so OnConnect returns at once. (Waiting for the broker in
// OnConnect lands neffos v0.0.24's server-side readiness signal right when
// the client's handshake ack arrives, where its waiterOnce can lose the
// wake-up and hang the client's Dial.)
func (e *Exchange) acquire(ctx context.Context, channel string, wait bool) error {
	e.subMu.Lock()
	s := e.subs[channel]
	if s == nil {
		s = &subState{}
		e.subs[channel] = s
	}
	s.refs++
	need := !s.active && !s.queued
	if need && wait {
		s.active = true
	} else if need {
		s.queued = true
		e.subQ = append(e.subQ, channel)
	}
	e.subMu.Unlock()
	if !need {
		return nil
	}
	if !wait {
		e.kick()
		return nil
	}
	return e.subscribe(ctx, channel)
}

func (e *Exchange) subscribe(ctx context.Context, channel string) error {
	if err := e.b.Subscribe(ctx, channel); err != nil {
		err = fmt.Errorf("%w: %s: %w", ErrSubscribe, channel, err)
		e.report(err)
		return err
	}
	return nil
}

func (e *Exchange) kick() {
	select {
	case e.subCh <- struct{}{}:
	default:
	}
}

// release drops a reference on channel; the subscriber goroutine
// unsubscribes it once no reference is left.
func (e *Exchange) release(channel string) {
	e.subMu.Lock()
	s := e.subs[channel]
	if s == nil {
		e.subMu.Unlock()
		return
	}
	s.refs--
	need := s.refs <= 0 && !s.queued
	if need {
		s.queued = true
		e.subQ = append(e.subQ, channel)
	}
	e.subMu.Unlock()
	if need {
		e.kick()
	}
}

// subscriber applies queued subscription changes, one at a time and in
// order, so an unsubscribe never overtakes a later subscribe of the same
// channel. Each change looks at the channel's reference count when it
// runs: a channel released and acquired again meanwhile is left alone.
func (e *Exchange) subscriber() {
	defer e.bg.Done()
	for {
		select {
		case <-e.done:
			return
		case <-e.subCh:
		}
		e.subMu.Lock()
		q := e.subQ
		e.subQ = nil
		e.subMu.Unlock()
		for _, channel := range q {
			e.apply(channel)
		}
	}
}

func (e *Exchange) apply(channel string) {
	e.subMu.Lock()
	s := e.subs[channel]
	if s == nil {
		e.subMu.Unlock()
		return
	}
	s.queued = false
	sub, unsub := false, false
	switch {
	case s.refs > 0 && !s.active:
		s.active, sub = true, true
	case s.refs <= 0:
		delete(e.subs, channel)
		unsub = s.active
	}
	e.subMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.SubscribeTimeout)
	defer cancel()
	if sub {
		_ = e.subscribe(ctx, channel)
	}
	if unsub {
		if err := e.b.Unsubscribe(ctx, channel); err != nil {
			e.report(fmt.Errorf("%w: unsubscribe %s: %w", ErrSubscribe, channel, err))
		}
	}
}

// sweeper releases connections that closed without neffos calling
// OnDisconnect (v0.0.24 skips it for a connection refused by the server's
// OnConnect when the server has an OnDisconnect callback).
func (e *Exchange) sweeper() {
	defer e.bg.Done()
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-e.done:
			return
		case <-t.C:
		}
		var gone []*neffos.Conn
		e.mu.RLock()
		for c := range e.conns {
			if c.IsClosed() {
				gone = append(gone, c)
			}
		}
		e.mu.RUnlock()
		for _, c := range gone {
			e.OnDisconnect(c)
		}
		now := time.Now()
		e.present.Range(func(k, v any) bool {
			if now.After(v.(time.Time)) {
				e.present.Delete(k)
			}
			return true
		})
	}
}

// fillEnvelope copies the exported fields of m that cross nodes.
func fillEnvelope(env *envelope, m *neffos.Message) {
	env.namespace, env.room, env.event, env.to, env.body = m.Namespace, m.Room, m.Event, m.To, m.Body
	if m.SetBinary {
		env.flags |= flagBinary
	}
	if m.IsNative {
		env.flags |= flagNative
	}
	if m.Err != nil {
		if text, isErr := errorText(m.Err); isErr {
			env.flags |= flagError
			env.errText = text
		} else {
			env.body = []byte(text) // neffos.Reply(body): travels as the body.
		}
	}
}

// errorText returns what neffos would write for err: the error's text, or
// the body of a neffos.Reply (isErr false).
func errorText(err error) (string, bool) {
	frame := neffos.Message{Event: "x", Err: err}.Serialize()
	// wait;ns;room;event;isError;isNoOp;body
	parts := strings.SplitN(string(frame), ";", 7)
	if len(parts) != 7 {
		return err.Error(), true
	}
	return parts[6], parts[4] == "1"
}

var knownErrors = []error{neffos.ErrBadNamespace, neffos.ErrBadRoom, neffos.ErrWrite, neffos.ErrInvalidPayload}

// messageOf builds the neffos message an envelope stands for.
func messageOf(env *envelope) *neffos.Message {
	m := &neffos.Message{
		Namespace: env.namespace,
		Room:      env.room,
		Event:     env.event,
		Body:      env.body,
		To:        env.to,
		SetBinary: env.flags&flagBinary != 0,
		IsNative:  env.flags&flagNative != 0,
	}
	if env.flags&flagError != 0 {
		m.Err = errors.New(env.errText)
		for _, k := range knownErrors {
			if k.Error() == env.errText {
				m.Err = k
			}
		}
	}
	return m
}

// Ask tokens. neffos keeps a server Ask's wait token in an unexported field
// and strips one '!' marker from its second byte at each of up to three
// places on the way (the node deserializing the question, a v0.0.24 client,
// the node deserializing the reply); the reply reaches NotifyAsk only if one
// marker is left. The question therefore carries three markers, and the
// token names the asking node and its ask id: "S!!!<node>-<id base36>".
// neffos's own tokens never start with 'S'.

const askMarkers = "!!!"

func askToken(node string, id uint64) string {
	return "S" + askMarkers + node + "-" + strconv.FormatUint(id, 36)
}

func parseAskToken(token string) (node string, id uint64, ok bool) {
	if len(token) < 2 || token[0] != 'S' {
		return "", 0, false
	}
	rest := strings.TrimLeft(token[1:], "!")
	node, ids, found := strings.Cut(rest, "-")
	if !found || len(node) != 16 {
		return "", 0, false
	}
	if _, err := hex.DecodeString(node); err != nil {
		return "", 0, false
	}
	id, err := strconv.ParseUint(ids, 36, 64)
	if err != nil {
		return "", 0, false
	}
	return node, id, true
}

// questionOf builds the message a client receives for an Ask: env's fields
// with the wait token set. The token is set through neffos's own
// deserializer (the field is unexported), from a frame that carries only the
// token; the other fields are assigned directly, so no escaping is involved.
func questionOf(env *envelope, token string) *neffos.Message {
	m := neffos.DeserializeMessage(neffos.TextMessage, []byte(token+";;;;0;0;"), false, false)
	q := messageOf(env)
	m.Namespace, m.Room, m.Event, m.Body, m.Err, m.SetBinary = q.Namespace, q.Room, q.Event, q.Body, q.Err, q.SetBinary
	m.To = q.To
	m.FromStackExchange = true
	return &m
}
