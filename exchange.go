package scaleout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kataras/neffos"
)

// Defaults of Options, applied by New.
const (
	DefaultPrefix           = "neffos"
	DefaultPublishTimeout   = 2 * time.Second
	DefaultSubscribeTimeout = 2 * time.Second
	DefaultQueueSize        = 16384
	DefaultRetain           = 30 * time.Second
	DefaultRetainMessages   = 65536
	DefaultRetainBytes      = 64 << 20
)

// Exchange is the engine behind every exchange of this module: it does the
// neffos side once, for any Broker.
//
// Per node it holds one broker subscription per namespace (taken in Init),
// one per node channel (Ask replies) and one per distinct connected client
// id (messages with To, Asks with To), all on the broker's shared
// connections. A broadcast is published once and read once per node, decoded
// once, then queued to each local connection in its audience: the To
// client, the room's members or the namespace's members, read from the
// node's own index, so a room message costs what the room has on this node.
// The publishing node serves its own clients directly and ignores its echo
// from the broker.
//
// # Concurrency
//
// All methods are safe for concurrent use. The engine is split by concern,
// each part with its own lock: the hub (local connections, their
// namespaces and rooms, one bounded queue each), subs (broker subscriptions
// and the goroutine that applies them in batches), asks (pending
// Server.Asks), the reporter (the goroutine that calls ErrorHandler and
// Logger), the publish pipeline, and sequencing and repair (history: the
// numbers and retransmit buffer of what this node sends; receivers: what it
// has seen of the others). The lock order is one chain, deliverMu (a
// received message's number check and fan-out; it takes receivers.mu
// briefly, releasing it before fanning out) then hub.mu then a peer's mu;
// pipeline.mu is only ever held with history.mu inside it (a broadcast is
// numbered as it is queued); every other lock is a leaf, and no engine lock
// is held while calling into neffos (Conn.Write, Namespace, Room, Is, ...),
// the Broker, or user code (ErrorHandler, Logger, handlers), so a neffos
// handler that holds a connection's lock can always broadcast.
//
// Fan-out runs on the caller's goroutine (Publish's, or the broker's
// receive loop) and never waits: it only appends to queues. Every queue is
// bounded: a connection's queue by Options.QueueSize (what does not fit is
// dropped and counted in Stats.Dropped), the error reports by 256
// (Stats.ReportsDropped), the not-here answers of Ask probes by 1024.
//
// # Delivery
//
// While the broker is healthy every message reaches every matching client
// exactly once. During a broker outage a node's messages reach its own
// clients at once and Publish returns false; the other nodes get them from
// its retransmit buffer when the broker is back (history.go, seq.go):
// late, in order, exactly once, as long as the buffer still holds them.
//
// Repair runs on two goroutines of the engine's: the sweeper (every
// 100 ms it sends the repair requests due; every second it queues a
// heartbeat) and serveRepairs (it answers other nodes' requests through
// the pipeline, at most 256 requests waiting). A received message's
// number check, hold and release run under deliverMu, like its fan-out.
type Exchange struct {
	b     Broker
	opts  Options
	names names
	node  string // this node's id: 16 hex digits

	hub  *hub
	subs *subs
	asks *asks
	rep  *reporter
	hist *history
	recv *receivers
	pipe *pipeline

	startOnce sync.Once
	startErr  error
	inited    atomic.Bool
	down      atomic.Bool // the last publish failed after its retries

	lazyMu sync.Mutex
	lazy   map[*neffos.Conn]map[string]struct{} // namespaces subscribed per conn when Init was not called

	// uncounted: the broker cannot count a channel's receivers (Publish
	// returns -1) and cannot be asked (no CountingPublisher): messages To a
	// client go through the namespace channel.
	uncounted atomic.Bool

	deliverMu sync.Mutex // held by deliver across accept and fan-out

	outbox  chan outgoing      // not-here answers, published off the receive loop
	repairs chan repairRequest // other nodes' repair requests, served off the receive loop
	ctlIn   chan envelope      // other nodes' control requests (cluster.go)

	nodes   nodes    // other live nodes, from heartbeats
	ctls    controls // this node's control requests waiting for answers
	started time.Time

	nsMu       sync.Mutex
	namespaces []string // from Init

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
	bg        sync.WaitGroup

	published, publishErrors, received, decodeErrors, resent atomic.Uint64
}

// outgoing is a publish queued for the outbox goroutine.
type outgoing struct {
	channel string
	env     envelope
}

const (
	sweepInterval = time.Second
	repairTick    = 100 * time.Millisecond
	outboxSize    = 1024
	// repairQueue bounds the repair requests waiting to be served; more
	// are dropped (the requester asks again after repairRetry).
	repairQueue = 256
)

// New returns an engine on top of b whose channel names all start with
// prefix ("" means DefaultPrefix): nodes of one app use the same prefix,
// apps that share a broker use different ones. It starts b, and its
// goroutines, on the first call neffos makes (Init, OnConnect, Publish or
// Ask). The engine owns b: Close closes it. Options is copied; zero fields
// take the Default* values.
func New(b Broker, prefix string, opts Options) *Exchange {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = DefaultPublishTimeout
	}
	if opts.SubscribeTimeout <= 0 {
		opts.SubscribeTimeout = DefaultSubscribeTimeout
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.Retain == 0 {
		opts.Retain = DefaultRetain
	}
	if opts.RetainMessages <= 0 {
		opts.RetainMessages = DefaultRetainMessages
	}
	if opts.RetainBytes <= 0 {
		opts.RetainBytes = DefaultRetainBytes
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	e := &Exchange{
		b:       b,
		opts:    opts,
		names:   names{prefix: prefixName(prefix)},
		node:    hex.EncodeToString(id[:]),
		hub:     newHub(opts.QueueSize),
		asks:    newAsks(),
		lazy:    make(map[*neffos.Conn]map[string]struct{}),
		outbox:  make(chan outgoing, outboxSize),
		repairs: make(chan repairRequest, repairQueue),
		ctlIn:   make(chan envelope, ctlQueue),
		started: time.Now(),
		done:    make(chan struct{}),
	}
	e.rep = newReporter(opts.ErrorHandler, opts.Logger, e.node)
	e.subs = newSubs(b, opts.SubscribeTimeout, e.rep.report)
	e.hist, e.recv = newHistory(opts.Retain, opts.RetainMessages, opts.RetainBytes), newReceivers()
	e.pipe = newPipeline(e)
	e.subs.dropped = e.recv.forget
	return e
}

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
	if e.isClosed() {
		return ErrClosed
	}
	if err := e.b.Start(e.deliver, e.rep.report); err != nil {
		return err
	}
	runs := []func(<-chan struct{}){e.subs.run, e.sweeper, e.rep.run, e.sendOutbox, e.pipe.run, e.serveRepairs}
	for range ctlWorkers {
		runs = append(runs, e.serveControls)
	}
	for _, run := range runs {
		e.bg.Add(1)
		go func() {
			defer e.bg.Done()
			run(e.done)
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.SubscribeTimeout)
	defer cancel()
	own := []string{e.names.node(e.node), e.names.beat(), e.names.control()}
	e.recv.listen(own...)
	_ = e.subs.acquireNow(ctx, own...)
	// Can the broker count receivers? A publish on a channel nobody
	// subscribes tells: 0, or -1 (Redis Cluster).
	if n, err := e.b.Publish(ctx, e.names.probe(), nil); err == nil && n < 0 && !e.counting() {
		e.uncounted.Store(true)
	}
	return nil
}

// Init subscribes the channel of every namespace neffos declares, once for
// this node, in one broker call. neffos calls it from
// Server.UseStackExchange. Subscribing here, not on a client's namespace
// connect, means a broadcast sent the moment a client's Connect returns
// reaches it.
//
// Init also wraps three handlers in each namespace's Events map
// (OnNamespaceConnect, OnRoomJoined, OnRoomLeft; the user's own still run,
// after the engine noted the event), so the engine knows which local
// connection is in which room without asking neffos. Register the exchange
// before the server serves, as neffos's documentation says.
func (e *Exchange) Init(namespaces neffos.Namespaces) error {
	if err := e.start(); err != nil {
		return err
	}
	channels := make([]string, 0, len(namespaces))
	for ns, events := range namespaces {
		if installHooks(ns, events, e.hub) {
			e.hub.hook(ns)
		}
		channels = append(channels, e.names.namespace(ns))
		e.hist.pin(e.names.namespace(ns), time.Now())
		e.nsMu.Lock()
		if !slices.Contains(e.namespaces, ns) {
			e.namespaces = append(e.namespaces, ns)
			slices.Sort(e.namespaces)
		}
		e.nsMu.Unlock()
	}
	e.recv.listen(channels...)
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.SubscribeTimeout)
	defer cancel()
	// A failure is reported, not returned: the broker subscribes the
	// channels again on reconnect, and the node serves its local clients
	// meanwhile.
	_ = e.subs.acquireConfirmed(ctx, channels...)
	e.inited.Store(true)
	return nil
}

// OnConnect registers c as a local connection and queues the subscription
// of its id's channel (one broker subscription per distinct id, on the
// shared broker connection, applied in the background in batches), so
// messages with To and Asks for it reach this node. Called by neffos before
// the server's OnConnect; it returns at once and never fails the connection
// because of the broker: during an outage the client is served locally.
// Until the broker confirmed the subscription, a message with To published
// on another node finds no subscriber on the id's channel and is
// re-published on the namespace's channel, which this node subscribed in
// Init.
func (e *Exchange) OnConnect(c *neffos.Conn) error {
	if err := e.start(); err != nil {
		return err
	}
	p, closed := e.hub.add(c, c.Namespace("") != nil)
	if closed {
		return ErrClosed
	}
	if p != nil {
		e.recv.listen(e.names.conn(p.id))
		e.subs.acquire(e.names.conn(p.id))
	}
	return nil
}

// OnDisconnect releases everything the exchange holds for c. It never blocks
// on the broker: unsubscribing happens in the background.
func (e *Exchange) OnDisconnect(c *neffos.Conn) {
	p := e.hub.remove(c)
	if p == nil {
		return
	}
	e.subs.release(e.names.conn(p.id))
	e.lazyMu.Lock()
	lazy := e.lazy[c]
	delete(e.lazy, c)
	e.lazyMu.Unlock()
	for ns := range lazy {
		e.subs.release(e.names.namespace(ns))
	}
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
	p, dropped := e.hub.ready(c, namespace)
	if p == nil {
		return
	}
	if dropped > 0 {
		e.rep.report(fmt.Errorf("%w: connection %q", ErrSlowConsumer, p.id))
	}
	if e.inited.Load() {
		return
	}
	e.lazyMu.Lock()
	set := e.lazy[c]
	if set == nil {
		set = make(map[string]struct{})
		e.lazy[c] = set
	}
	_, had := set[namespace]
	set[namespace] = struct{}{}
	e.lazyMu.Unlock()
	if !had {
		e.recv.listen(e.names.namespace(namespace))
		e.subs.acquire(e.names.namespace(namespace))
	}
}

// Unsubscribe is called by neffos after a client left namespace; it undoes
// Subscribe.
func (e *Exchange) Unsubscribe(c *neffos.Conn, namespace string) {
	if e.hub.leave(c, namespace) == nil {
		return
	}
	e.lazyMu.Lock()
	_, had := e.lazy[c][namespace]
	delete(e.lazy[c], namespace)
	e.lazyMu.Unlock()
	if had {
		e.subs.release(e.names.namespace(namespace))
	}
}

// Publish delivers msgs to this node's matching clients at once and
// publishes each message to the broker once (one publish per message,
// whatever the number of clients).
//
// A broadcast (no To) is queued, in order, for the node's publish pipeline
// and Publish returns without waiting for the broker: true means queued
// while the broker was healthy. The pipeline sends in batches, each
// attempt bounded by Options.PublishTimeout, and retries a message until it
// is 5 PublishTimeouts old (10 s by default); a message it gives up on is
// counted in Stats.PublishErrors and reported (ErrPublish). After
// PublishTimeout without progress the broker counts as down and Publish
// returns false at once (the message is still queued while there is room,
// and sent if the broker returns in time). A message To one
// client is published before Publish returns (it may need the broker's
// receiver count), bounded by PublishTimeout; false means it failed.
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
	exclPeer, exclID := e.hub.excluded(m)
	env.exclude = exclID // other nodes skip every connection with this id
	// Here, Broadcast(conn/nsConn) skips that exact connection and
	// Exclude(id) every connection with the id, as neffos does.
	local := fanout{m: messageOf(&env), to: env.to, exclPeer: exclPeer}
	if exclPeer == nil {
		local.exclID = exclID
	}
	if env.to == "" {
		// The hot path: queued in order for the broker, sent in batches
		// while this node serves its own clients.
		ok := e.pipe.push(e.names.namespace(env.namespace), env, true) && !e.down.Load()
		e.fanout(local)
		return ok
	}
	e.fanout(local)
	if e.down.Load() {
		// The broker is down: queued with the broadcasts, on the
		// namespace channel (no receiver count to be had), numbered in
		// the client's stream, so it arrives in order when the broker is
		// back, or is repaired. Publish does not wait for the broker.
		e.pipe.push(e.names.namespace(env.namespace), env, true)
		return false
	}
	_, _, err := e.route(&env, false)
	return err == nil
}

// route publishes env for its To client: on the client's channel, where
// only the node holding the client reads it, when the broker can tell that
// somebody subscribes it; otherwise on the namespace's channel, which every
// node reads and where each picks the client by id (it may have connected
// a moment ago, its node not done subscribing; or the broker cannot count
// receivers, like Redis Cluster's PUBLISH). With probe (an Ask), nodes
// without the client answer not-here. It reports whether it went through
// the namespace channel, with that publish's receiver count (-1: unknown).
func (e *Exchange) route(env *envelope, probe bool) (viaNamespace bool, receivers int, err error) {
	if !e.uncounted.Load() {
		n, err := e.publishCounted(e.names.conn(env.to), env)
		switch {
		case err != nil:
			return false, 0, err
		case n > 0 || (n < 0 && e.counting()):
			// Somebody has it, or a counting publish timed out after it
			// was sent: it is out, on the client's channel.
			return false, n, nil
		case n < 0:
			e.uncounted.Store(true) // learnt late: the start probe failed
		}
		if probe {
			// Nobody read the Ask there: its number is void, and the
			// namespace copy, which every node reads, gets a number of
			// the namespace's stream.
			e.hist.void(env.stream, env.seq)
			env.stream, env.seq, env.age = 0, 0, 0
		}
		// A message keeps its number of the client's stream: the node
		// holding the client takes the namespace copy in that stream's
		// order.
	}
	if probe {
		env.flags |= flagProbe
	}
	m, err := e.publish(e.names.namespace(env.namespace), env)
	return true, m, err
}

// fanout queues f locally and reports slow consumers, outside every lock.
func (e *Exchange) fanout(f fanout) int {
	n, slow := e.hub.fanout(f)
	for _, id := range slow {
		e.rep.report(fmt.Errorf("%w: connection %q", ErrSlowConsumer, id))
	}
	return n
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
	pub = e.observed(pub)
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.PublishTimeout)
	defer cancel()
	// Messages To one client are numbered in the client channel's stream,
	// whichever channel carries them, and retained for repair; an Ask, a
	// reply and a not-here keep only their number; repair requests are not
	// numbered.
	var payload []byte
	if env.stream == 0 && env.kind <= kindNotHere {
		payload = e.hist.stamp(e.seqChannel(channel, env), env, env.kind == kindBroadcast, time.Now())
	} else {
		payload = encodeEnvelope(env)
	}
	n, err := pub(ctx, channel, payload)
	// A failed publish may have reached the broker or not; receivers drop
	// what they read twice, so it is retried until PublishTimeout.
	// While the broker is known to be down (the last publish gave up), one
	// attempt each, so a node in an outage fails fast.
	retry := !e.down.Load()
	for backoff := retryBackoff; retry && err != nil && !e.isClosed() && !errors.Is(err, ErrRejected); backoff = min(2*backoff, maxRetryBackoff) {
		if !sleepCtx(ctx, backoff) {
			break
		}
		n, err = pub(ctx, channel, payload)
	}
	if err != nil && e.isClosed() {
		return 0, ErrClosed // the broker went away with Close
	}
	if err != nil {
		if !errors.Is(err, ErrRejected) {
			e.down.Store(true)
		}
		e.failed(channel, err)
		return 0, fmt.Errorf("%w: %s: %w", ErrPublish, channel, err)
	}
	e.down.Store(false)
	e.published.Add(1)
	return n, nil
}

// counting reports whether the broker counts receivers only on request
// (CountingPublisher), at a cost.
func (e *Exchange) counting() bool {
	_, ok := e.b.(CountingPublisher)
	return ok
}

// deliver is the broker's receive callback: decode once, then fan out. It
// never waits: fan-out only queues, and answers go through the outbox or
// the pipeline.
func (e *Exchange) deliver(channel string, payload []byte) {
	e.received.Add(1)
	env, err := decodeEnvelope(payload)
	if err != nil {
		e.decodeErrors.Add(1)
		e.rep.report(fmt.Errorf("channel %s: %w", channel, err))
		return
	}
	if env.origin == e.node {
		return // own echo: local clients were served directly.
	}
	switch env.kind {
	case kindRepair:
		select {
		case e.repairs <- repairRequest{origin: env.origin, channel: env.event, stream: env.stream, from: env.seq, to: env.id}:
		default: // the requester asks again
		}
		return
	case kindControl:
		if channel == e.names.control() {
			e.takeControl(env)
		}
		return
	case kindControlReply:
		e.controlReply(&env)
		return
	case kindResend:
		inner, err := decodeEnvelope(env.body)
		if err != nil || inner.origin != env.origin || inner.kind != kindBroadcast {
			e.decodeErrors.Add(1)
			e.rep.report(fmt.Errorf("channel %s: resend: %w", channel, errors.Join(ErrMalformed, err)))
			return
		}
		e.accept(env.event, &inner, true)
		return
	}
	e.accept(channel, &env, false)
}

// accept runs env, read on channel (or resent for it, repair), through the
// sequence check and handles what that releases, in order. Taking a number
// and fanning its message out is one step, under deliverMu, so that two
// receive loops (one per broker, Redundant), or a receive loop and the
// sweeper, cannot swap two messages of one origin between the check and
// the queues.
func (e *Exchange) accept(channel string, env *envelope, repair bool) {
	now := time.Now()
	e.deliverMu.Lock()
	defer e.deliverMu.Unlock()
	var out []envelope
	var lost []missed
	switch env.kind {
	case kindBeat:
		info, beats, ok := decodeBeats(env.body)
		node, infoOK := decodeNodeInfo(env.origin, info, now)
		if !ok || !infoOK {
			e.decodeErrors.Add(1)
			e.rep.report(fmt.Errorf("channel %s: heartbeat: %w", channel, ErrMalformed))
			return
		}
		e.nodes.seen(node)
		out, lost = e.recv.heartbeat(env.origin, beats, now)
	case kindVoid:
		out, lost = e.recv.fill(env.event, env.origin, env.stream, env.seq, env.id, env.flags&flagGone != 0)
	default:
		if sc := e.seqChannel(channel, env); sc != channel {
			if !e.recv.listening(sc) {
				return // a message To a client this node does not hold
			}
			channel = sc
		}
		var fresh bool
		out, lost, fresh = e.recv.accept(channel, env, now, repair)
		if fresh && repair {
			e.recv.repaired.Add(1)
		}
	}
	e.reportMissed(lost)
	for i := range out {
		e.handle(&out[i])
	}
}

// seqChannel is the channel whose stream numbers env: a message To one
// client is numbered in the client's channel, even when it travels on the
// namespace's (a client just connected, a broker that cannot count).
func (e *Exchange) seqChannel(channel string, env *envelope) string {
	if env.kind == kindBroadcast && env.to != "" {
		return e.names.conn(env.to)
	}
	return channel
}

// handle acts on a message the sequence check let through.
func (e *Exchange) handle(env *envelope) {
	switch env.kind {
	case kindBroadcast:
		e.fanout(fanout{m: messageOf(env), to: env.to, exclID: env.exclude})
	case kindAsk:
		n := e.fanout(fanout{m: questionOf(env, askToken(env.origin, env.id)), to: env.to, exclID: env.exclude})
		if n == 0 && env.flags&flagProbe != 0 {
			e.send(e.names.node(env.origin), envelope{kind: kindNotHere, origin: e.node, id: env.id})
		}
	case kindReply:
		e.asks.complete(env.id, *messageOf(env))
	case kindNotHere:
		e.asks.notHere(env.id)
	}
}

// serveRepairs answers other nodes' repair requests from the retransmit
// buffer, through the pipeline (in order, batched, retried), on the
// requester's node channel: the envelopes it still holds as resends, the
// rest as void or gone.
func (e *Exchange) serveRepairs(done <-chan struct{}) {
	consume(done, e.repairs, func(q repairRequest) {
		if q.from == 0 || q.to < q.from || q.to-q.from >= repairMax {
			return // not a request this module sends
		}
		a := e.hist.lookup(q.channel, q.stream, q.from, q.to)
		to := e.names.node(q.origin)
		void := func(r [2]uint64, gone bool) {
			env := envelope{kind: kindVoid, origin: e.node, event: q.channel, stream: q.stream, seq: r[0], id: r[1]}
			if gone {
				env.flags |= flagGone
			}
			e.pipe.push(to, env, false)
		}
		if a.gone[0] != 0 {
			void(a.gone, true)
		}
		for _, r := range a.void {
			void(r, false)
		}
		for _, p := range a.payloads {
			e.pipe.push(to, envelope{kind: kindResend, origin: e.node, event: q.channel, body: p}, false)
			e.resent.Add(1)
		}
	})
}

// send queues a publish for the outbox goroutine: the receive path must not
// wait for the broker (an in-process broker delivers from inside Publish).
// When the outbox is full the answer is dropped and counted as a publish
// error; the Ask it answers then ends by its deadline.
func (e *Exchange) send(channel string, env envelope) {
	select {
	case e.outbox <- outgoing{channel: channel, env: env}:
	default:
		e.publishErrors.Add(1)
		e.rep.report(fmt.Errorf("%w: %s: outbox full (%d)", ErrPublish, channel, outboxSize))
	}
}

func (e *Exchange) sendOutbox(done <-chan struct{}) {
	consume(done, e.outbox, func(o outgoing) { _, _ = e.publish(o.channel, &o.env) })
}

// Ask sends msg to its To client, or to every client of msg.Namespace when
// To is empty, on whichever node holds them, and returns the first reply.
// neffos's token is not used: the question carries a token of this
// exchange's (node id + ask id), and the reply comes back on this node's own
// channel, on the broker connection the node already has. When To is a
// client no node holds, Ask returns ErrConnNotFound at once (for brokers
// that count receivers) or within Options.SubscribeTimeout. The wait is
// bounded by ctx.
func (e *Exchange) Ask(ctx context.Context, msg neffos.Message, _ string) (_ neffos.Message, err error) {
	if e.opts.Observer != nil {
		defer e.observeAsk(time.Now(), &err)
	}
	if err := e.start(); err != nil {
		return neffos.Message{}, err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	id, pa, ok := e.asks.add()
	if !ok || e.isClosed() {
		return neffos.Message{}, ErrClosed
	}
	defer e.asks.remove(id)

	env := envelope{kind: kindAsk, origin: e.node, id: id}
	fillEnvelope(&env, &msg)
	_, env.exclude = e.hub.excluded(&msg)
	local := 0
	if env.to != "" {
		local = e.hub.count(env.to)
	}
	e.fanout(fanout{m: questionOf(&env, askToken(e.node, id)), to: env.to, exclID: env.exclude})
	var graceC <-chan time.Time // fires when a probe with uncounted nodes gave up
	switch {
	case env.to == "":
		if _, err := e.publish(e.names.namespace(env.namespace), &env); err != nil && local == 0 {
			return neffos.Message{}, err
		}
	case local == 0:
		viaNamespace, m, err := e.route(&env, true)
		if err != nil {
			return neffos.Message{}, err
		}
		if !viaNamespace {
			break
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
		e.asks.expect(pa, m-1)
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
// to the waiting Ask when that node is this one. It returns an error
// wrapping ErrMalformed for tokens this module did not issue.
func (e *Exchange) NotifyAsk(msg neffos.Message, token string) error {
	node, id, ok := parseAskToken(token)
	if !ok {
		return fmt.Errorf("%w: ask token %q", ErrMalformed, token)
	}
	env := envelope{kind: kindReply, origin: e.node, id: id}
	fillEnvelope(&env, &msg)
	env.to = ""
	if node == e.node {
		e.asks.complete(id, *messageOf(&env))
		return nil
	}
	if err := e.start(); err != nil {
		return err
	}
	_, err := e.publish(e.names.node(node), &env)
	return err
}

// Stats returns the exchange's counters: atomic loads, no lock.
func (e *Exchange) Stats() Stats {
	return Stats{
		Published:      e.published.Load(),
		PublishErrors:  e.publishErrors.Load(),
		Received:       e.received.Load(),
		Delivered:      e.hub.delivered.Load(),
		Dropped:        e.hub.dropped.Load(),
		Duplicates:     e.recv.duplicates.Load(),
		Missed:         e.recv.missed.Load(),
		Repaired:       e.recv.repaired.Load(),
		Resent:         e.resent.Load(),
		Held:           int(e.recv.held.Load()),
		Retained:       int(e.hist.count.Load()),
		RetainedBytes:  int(e.hist.size.Load()),
		DecodeErrors:   e.decodeErrors.Load(),
		ReportsDropped: e.rep.dropped.Load(),
		Conns:          int(e.hub.conns.Load()),
		Queued:         int(e.hub.queued.Load()),
		Outbound:       int(e.pipe.length.Load()),
		Subscriptions:  int(e.subs.active.Load()),
		PendingAsks:    int(e.asks.n.Load()),
	}
}

// BrokerConns returns how many connections this node holds on the broker
// server, as counted by the server: for tests, benchmarks and monitoring
// that check a node holds O(1) broker connections. It costs what the
// broker's BrokerInspector.Conns costs (a round trip to the server), and
// returns an error wrapping errors.ErrUnsupported when the broker is not a
// BrokerInspector.
func (e *Exchange) BrokerConns(ctx context.Context) (int, error) {
	bi, ok := e.b.(BrokerInspector)
	if !ok {
		return 0, fmt.Errorf("scaleout: broker connection count: %w", errors.ErrUnsupported)
	}
	return inspected(bi.Conns(ctx))
}

// NamespaceSubscribers returns how many subscriptions the broker server
// counts on the channel of namespace, over all nodes: one per node that
// serves namespace. Like BrokerConns it is for tests and monitoring, costs
// a round trip to the broker server, and needs a BrokerInspector.
func (e *Exchange) NamespaceSubscribers(ctx context.Context, namespace string) (int, error) {
	bi, ok := e.b.(BrokerInspector)
	if !ok {
		return 0, fmt.Errorf("scaleout: subscriber count: %w", errors.ErrUnsupported)
	}
	return inspected(bi.Subscribers(ctx, e.names.namespace(namespace)))
}

// inspected wraps ErrBrokerUnavailable around a BrokerInspector's failure
// to ask its server.
func inspected(n int, err error) (int, error) {
	if err != nil && !errors.Is(err, errors.ErrUnsupported) && !errors.Is(err, ErrBrokerUnavailable) {
		return 0, fmt.Errorf("%w: %w", ErrBrokerUnavailable, err)
	}
	return n, err
}

// ChannelOf returns the broker channel of a namespace. It is for adapter
// authors' tests and tools that look at the broker directly (the adapters'
// StackExchange types do not export it). It only builds a string.
func (e *Exchange) ChannelOf(namespace string) string { return e.names.namespace(namespace) }

// NodeID returns this node's id, as carried in envelopes (16 hex digits);
// the node's own channel is ChannelOf's prefix then ".node." and the id.
// Like ChannelOf it is for adapter authors' tests.
func (e *Exchange) NodeID() string { return e.node }

// Close stops the engine's goroutines, fails pending Asks with ErrClosed and
// closes the broker. Messages still queued for clients are discarded. It is
// idempotent; later calls return the first call's result.
func (e *Exchange) Close() error {
	e.closeOnce.Do(func() {
		e.hub.close()
		e.asks.close()
		close(e.done)
		started := true
		e.startOnce.Do(func() { started = false; e.startErr = ErrClosed })
		if started && e.startErr == nil {
			// The reporter may be inside a user's ErrorHandler; the other
			// goroutines return within SubscribeTimeout.
			waitTimeout(&e.bg, e.opts.SubscribeTimeout+e.opts.PublishTimeout)
		}
		e.closeErr = e.b.Close()
		// A drain blocked in a socket write to a client that stopped
		// reading returns when neffos closes that connection.
		waitTimeout(&e.hub.drains, e.opts.PublishTimeout)
	})
	return e.closeErr
}

// waitTimeout waits for wg at most d.
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

// sweeper runs the node's timers: every repairTick it asks other nodes for
// what this node misses; every beatInterval it queues a heartbeat; every
// sweepInterval it releases connections that closed without neffos calling
// OnDisconnect (v0.0.24 skips it for a connection refused by the server's
// OnConnect when the server has an OnDisconnect callback), gives up gaps
// older than gapWait and forgets idle streams.
func (e *Exchange) sweeper(done <-chan struct{}) {
	t := time.NewTicker(repairTick)
	defer t.Stop()
	var lastBeat, lastSweep time.Time
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		now := time.Now()
		for _, q := range e.recv.due(now) {
			e.send(e.names.node(q.origin), envelope{kind: kindRepair, origin: e.node, event: q.channel, stream: q.stream, seq: q.from, id: q.to})
		}
		if now.Sub(lastBeat) >= beatInterval {
			lastBeat = now
			e.pipe.pushBeat()
		}
		joined, left := e.nodes.expire(now.Add(-NodeExpiry))
		for _, n := range joined {
			if e.opts.OnNodeJoin != nil {
				e.opts.OnNodeJoin(n)
			}
		}
		for _, n := range left {
			if e.opts.OnNodeLeave != nil {
				e.opts.OnNodeLeave(n)
			}
		}
		if now.Sub(lastSweep) < sweepInterval {
			continue
		}
		lastSweep = now
		for _, c := range e.hub.snapshot() {
			if c.IsClosed() {
				e.OnDisconnect(c)
			}
		}
		e.deliverMu.Lock()
		out, lost := e.recv.sweep(now)
		e.reportMissed(lost)
		for i := range out {
			e.handle(&out[i])
		}
		e.deliverMu.Unlock()
		e.hist.sweep(now, now.Add(-streamIdle))
	}
}

func (e *Exchange) reportMissed(lost []missed) {
	for _, m := range lost {
		e.rep.report(fmt.Errorf("%w: %w", ErrMissed, m))
	}
}

const (
	retryBackoff    = 10 * time.Millisecond
	maxRetryBackoff = 200 * time.Millisecond
)

// sleepCtx waits d, or until ctx is done (then it reports false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
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
		m.Err = errorOf(env.errText)
	}
	return m
}
