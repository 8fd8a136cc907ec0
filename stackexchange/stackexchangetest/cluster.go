package stackexchangetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/neffostest"
	"github.com/neffos-contrib/scaleout/internal/testkit"
)

// Events the suite uses.
const (
	evMsg      = "msg"      // server broadcasts, clients record
	evFence    = "fence"    // barrier messages
	evQuestion = "question" // Server.Ask; clients reply "answer:<name>:<body>"
	evSilent   = "silent"   // Server.Ask; clients never reply
	evEmit     = "emit"     // client -> server; server handler counts
	evEcho     = "echo"     // client -> server; server handler emits back
	// client Ask -> server; the handler re-broadcasts the message as evMsg
	// to everyone but the asker, then replies "rebroadcast".
	evRebroadcast = "rebroadcast"
	// the server broadcasts evLeft from OnRoomLeft and OnNamespaceDisconnect
	// of namespace nsLeavers, with Broadcast(nil, ...), and of namespace
	// nsXLeft, with Broadcast(nsConn, ...) to room roomWatch ("X left", to
	// everyone else who watches).
	evLeft    = "left"
	nsLeavers = "leavers"
	nsXLeft   = "xleft"
	roomWatch = "watch"
	// Server.Ask; clients reply with the error errKnown, registered with
	// neffos.RegisterKnownError.
	evQuestionErr = "questionErr"
)

// node is one neffos server with its own exchange, as a separate machine
// would have.
type node struct {
	idx   int
	srv   *neffos.Server
	exc   neffos.StackExchange
	url   string
	hs    *http.Server
	conns sync.Map // conn id -> *neffos.Conn, server side
}

type cluster struct {
	t       *testing.T
	nodes   []*node
	nss     []string
	native  bool
	emitsMu sync.Mutex
	emits   map[string][]int // body -> nodes whose server handler got it
	fences  atomic.Int64

	f       Factory
	channel string
	opts    func(nd *node) scaleout.Options
}

// newCluster starts n nodes on loopback sharing one channel prefix, with
// the zero scaleout.Options.
func newCluster(t *testing.T, f Factory, n int, namespaces []string, native bool) *cluster {
	t.Helper()
	return newClusterOpts(t, f, n, namespaces, native, nil)
}

// newClusterOpts is newCluster with the engine options opts returns for
// each node (nil: the zero value). opts runs before the node's factory
// call; nd.exc is set right after it, before the node serves anything.
func newClusterOpts(t *testing.T, f Factory, n int, namespaces []string, native bool, opts func(nd *node) scaleout.Options) *cluster {
	t.Helper()
	cl := &cluster{t: t, nss: namespaces, native: native, emits: map[string][]int{}, f: f, channel: uniqueChannel(t), opts: opts}
	for i := 0; i < n; i++ {
		cl.nodes = append(cl.nodes, cl.startNode(i))
	}
	t.Cleanup(func() {
		for _, nd := range cl.nodes {
			nd.srv.Close()
		}
		for _, nd := range cl.nodes {
			nd.stop()
		}
	})
	return cl
}

// startNode starts node i: a neffos server with a new exchange from the
// cluster's factory, on a new loopback port.
func (cl *cluster) startNode(i int) *node {
	t := cl.t
	t.Helper()
	nd := &node{idx: i}
	nd.srv = neffos.New(gorilla.DefaultUpgrader, cl.serverHandler(nd))
	nd.srv.OnConnect = func(c *neffos.Conn) error {
		if r := c.Socket().Request(); r != nil && r.URL.Query().Has("refuse") {
			return errRefused
		}
		nd.conns.Store(c.ID(), c)
		return nil
	}
	// Set, so that neffos v0.0.24 skips StackExchange.OnDisconnect for
	// refused connections (the exchange must release them anyway).
	nd.srv.OnDisconnect = func(*neffos.Conn) {}
	// A client may choose its connection id (?cid=...), to test hostile
	// ids.
	nd.srv.IDGenerator = func(w http.ResponseWriter, r *http.Request) string {
		if q := r.URL.Query(); q.Has("cid") {
			return q.Get("cid")
		}
		return neffos.DefaultIDGenerator(w, r)
	}
	var o scaleout.Options
	if cl.opts != nil {
		o = cl.opts(nd)
	}
	exc := cl.f(t, cl.channel, o)
	if exc == nil {
		t.Fatalf("factory returned a nil exchange")
	}
	nd.exc = exc
	if err := nd.srv.UseStackExchange(exc); err != nil {
		t.Fatalf("node %d: UseStackExchange: %v", i, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nd.url = "ws://" + ln.Addr().String()
	nd.hs = &http.Server{Handler: neffostest.Handler(nd.srv), ReadHeaderTimeout: 10 * time.Second}
	go nd.hs.Serve(ln)
	return nd
}

// stop closes the node's exchange and listener (after its server).
func (nd *node) stop() {
	if c, ok := nd.exc.(interface{ Close() error }); ok {
		_ = c.Close()
	}
	_ = nd.hs.Close()
}

// restart stops node i (its clients are disconnected) and starts a new
// one in its place, with a new exchange: the node's process restarted.
func (cl *cluster) restart(i int) {
	cl.t.Helper()
	old := cl.nodes[i]
	old.srv.Close()
	old.stop()
	cl.nodes[i] = cl.startNode(i)
}

func uniqueChannel(t *testing.T) string { return testkit.Name(t, "sxt") }

func (cl *cluster) serverHandler(nd *node) neffos.ConnHandler {
	if cl.native {
		return neffos.Events{neffos.OnNativeMessage: func(*neffos.NSConn, neffos.Message) error { return nil }}
	}
	nss := neffos.Namespaces{}
	for _, ns := range cl.nss {
		if ns == nsLeavers {
			// neffos runs these handlers holding the connection's lock.
			left := func(kind string) neffos.MessageHandlerFunc {
				return func(c *neffos.NSConn, m neffos.Message) error {
					c.Conn.Server().Broadcast(nil, neffos.Message{Namespace: nsLeavers, Event: evLeft, Body: []byte(kind + ":" + c.Conn.ID())})
					return nil
				}
			}
			nss[ns] = neffos.Events{neffos.OnRoomLeft: left("room"), neffos.OnNamespaceDisconnect: left("ns")}
			continue
		}
		if ns == nsXLeft {
			// "X left", to everyone but X: Broadcast(nsConn, ...), which the
			// exchange resolves to a connection, from inside neffos's lock.
			left := func(kind string) neffos.MessageHandlerFunc {
				return func(c *neffos.NSConn, m neffos.Message) error {
					c.Conn.Server().Broadcast(c, neffos.Message{Namespace: nsXLeft, Room: roomWatch, Event: evLeft, Body: []byte(kind + ":" + c.Conn.ID())})
					return nil
				}
			}
			nss[ns] = neffos.Events{neffos.OnRoomLeft: left("room"), neffos.OnNamespaceDisconnect: left("ns")}
			continue
		}
		nss[ns] = neffos.Events{
			evEmit: func(c *neffos.NSConn, m neffos.Message) error {
				cl.emitsMu.Lock()
				cl.emits[string(m.Body)] = append(cl.emits[string(m.Body)], nd.idx)
				cl.emitsMu.Unlock()
				return nil
			},
			evEcho: func(c *neffos.NSConn, m neffos.Message) error {
				c.Emit(evMsg, m.Body)
				return nil
			},
			evRebroadcast: func(c *neffos.NSConn, m neffos.Message) error {
				m.Event = evMsg
				c.Conn.Server().Broadcast(c, m)
				return neffos.Reply([]byte("rebroadcast"))
			},
		}
	}
	return nss
}

func (cl *cluster) emitted(body string) []int {
	cl.emitsMu.Lock()
	defer cl.emitsMu.Unlock()
	return append([]int(nil), cl.emits[body]...)
}

// conn returns the server side of a client.
func (cl *cluster) conn(c *client) *neffos.Conn {
	v, ok := cl.nodes[c.node].conns.Load(c.id)
	if !ok {
		cl.t.Fatalf("no server connection for client %s", c.name)
	}
	return v.(*neffos.Conn)
}

// received is one message a client got.
type received struct {
	ns, room, event string
	body            []byte
	binary          bool
	err             error
	at              time.Time // when the client's handler got it
}

// client is a real neffos Go client.
type client struct {
	name   string
	node   int
	id     string
	c      *neffos.Client
	nsc    map[string]*neffos.NSConn
	sock   *neffostest.Socket
	seq    bool
	next   int // next expected sequence number (seq mode)
	bad    int // sequence numbers out of order or repeated (seq mode)
	mu     sync.Mutex
	got    []received
	notify chan struct{}
}

// dial connects a client to node and to each namespace in nss.
func (cl *cluster) dial(name string, nodeIdx int, nss ...string) *client {
	cl.t.Helper()
	c, err := cl.tryDial(name, nodeIdx, nss...)
	if err != nil {
		cl.t.Fatalf("dial %s to node %d: %v", name, nodeIdx, err)
	}
	return c
}

// dialOpts are the less common ways to dial.
type dialOpts struct {
	id     string // connection id the server must give the client (?cid=)
	slow   bool   // tiny socket buffers on both ends; the client can stall
	refuse bool   // the server's OnConnect refuses the connection
	seq    bool   // count evMsg bodies as a sequence instead of recording them
	// guard, when set, runs each neffos call (Dial, Connect) through
	// guard: a call blocked for callTimeout fails the rule.
	guard *testing.T
}

func (cl *cluster) tryDial(name string, nodeIdx int, nss ...string) (*client, error) {
	return cl.dialWith(name, nodeIdx, dialOpts{}, nss...)
}

func (cl *cluster) dialWith(name string, nodeIdx int, o dialOpts, nss ...string) (*client, error) {
	c := &client{name: name, node: nodeIdx, nsc: map[string]*neffos.NSConn{}, notify: make(chan struct{}, 1), seq: o.seq}
	var handler neffos.ConnHandler
	if cl.native {
		handler = neffos.Events{neffos.OnNativeMessage: func(_ *neffos.NSConn, m neffos.Message) error {
			c.record(m)
			return nil
		}}
	} else {
		all := neffos.Namespaces{}
		for _, ns := range cl.nss {
			all[ns] = neffos.Events{neffos.OnAnyEvent: func(_ *neffos.NSConn, m neffos.Message) error {
				if neffos.IsSystemEvent(m.Event) {
					return nil
				}
				if m.Event == evQuestion {
					return neffos.Reply([]byte("answer:" + c.name + ":" + string(m.Body)))
				}
				if m.Event == evQuestionErr {
					return errKnown
				}
				if c.seq && m.Event == evMsg {
					c.sequence(m.Body)
					return nil
				}
				c.record(m)
				return nil
			}}
		}
		handler = all
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialer := neffostest.Dialer(o.slow, func(s *neffostest.Socket) { c.sock = s })
	if cl.native {
		dialer = gorilla.DefaultDialer // a native-only client sends no ack
	}
	u := cl.nodes[nodeIdx].url
	q := neturl.Values{}
	if o.id != "" {
		q.Set("cid", o.id)
	}
	if o.slow {
		q.Set("slow", "1")
	}
	if o.refuse {
		q.Set("refuse", "1")
	}
	if len(q) > 0 {
		u += "/?" + q.Encode()
	}
	run := func(_ string, call func()) { call() }
	if o.guard != nil {
		run = func(what string, call func()) { guard(o.guard, what, call) }
	}
	var nc *neffos.Client
	var err error
	run(fmt.Sprintf("Dial %s to node %d", name, nodeIdx), func() { nc, err = neffos.Dial(ctx, dialer, u, handler) })
	if err != nil {
		return nil, err
	}
	c.c, c.id = nc, nc.ID
	for _, ns := range nss {
		c.settle()
		var nsc *neffos.NSConn
		run(fmt.Sprintf("Connect %s to namespace %q on node %d", name, ns, nodeIdx), func() { nsc, err = nc.Connect(ctx, ns) })
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("connect %q: %w", ns, err)
		}
		c.nsc[ns] = nsc
	}
	cl.t.Cleanup(nc.Close)
	return c, nil
}

// settle waits until the client's reader is not inside a frame's handling
// (neffostest explains why); call it before each call that asks.
func (c *client) settle() {
	if c.sock != nil {
		c.sock.Settle()
	}
}

// join joins room on namespace ns.
func (c *client) join(ctx context.Context, ns, room string) (*neffos.Room, error) {
	c.settle()
	return c.nsc[ns].JoinRoom(ctx, room)
}

// sequence checks that evMsg bodies arrive as 0, 1, 2, ... exactly once.
func (c *client) sequence(body []byte) {
	n, err := strconv.Atoi(string(body))
	c.mu.Lock()
	if err != nil || n != c.next {
		c.bad++
	} else {
		c.next++
	}
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *client) seqState() (next, bad int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.next, c.bad
}

func (c *client) record(m neffos.Message) {
	c.mu.Lock()
	c.got = append(c.got, received{ns: m.Namespace, room: m.Room, event: m.Event, body: append([]byte(nil), m.Body...), binary: m.SetBinary, err: m.Err, at: time.Now()})
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// count returns how many messages match.
func (c *client) count(match func(received) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, r := range c.got {
		if match(r) {
			n++
		}
	}
	return n
}

// firstSince returns the arrival time of the earliest message matching
// match that arrived after since. It looks back from the newest message
// and stops at the first one older than since, so its cost is the number
// of messages since then.
func (c *client) firstSince(since time.Time, match func(received) bool) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first time.Time
	for i := len(c.got) - 1; i >= 0 && c.got[i].at.After(since); i-- {
		if match(c.got[i]) {
			first = c.got[i].at
		}
	}
	return first, !first.IsZero()
}

func (c *client) messages() []received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]received(nil), c.got...)
}

func withBody(event, body string) func(received) bool {
	return func(r received) bool { return r.event == event && string(r.body) == body }
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(d time.Duration, cond func() bool) bool { return testkit.Until(d, cond) }

// waitFor waits until c has at least n messages matching match.
func (c *client) waitFor(d time.Duration, n int, match func(received) bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		if c.count(match) >= n {
			return true
		}
		select {
		case <-c.notify:
		case <-deadline.C:
			return c.count(match) >= n
		}
	}
}

// barrier broadcasts a fence from every node on ns and waits until every
// client in clients got all of them. Brokers keep per-publisher order, so
// after the barrier every message published earlier, duplicates included,
// has arrived.
func (cl *cluster) barrier(ns string, clients ...*client) {
	cl.t.Helper()
	var bodies []string
	for _, nd := range cl.nodes {
		body := fmt.Sprintf("fence-%d-%d", nd.idx, cl.fences.Add(1))
		bodies = append(bodies, body)
		nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evFence, Body: []byte(body)})
	}
	for _, c := range clients {
		for _, b := range bodies {
			if !c.waitFor(15*time.Second, 1, withBody(evFence, b)) {
				cl.t.Fatalf("barrier: client %s (node %d) never got %s", c.name, c.node, b)
			}
		}
	}
}

// expectCount fails unless c got exactly want messages matching match.
func expectCount(t *testing.T, rule string, c *client, want int, event, body string) {
	t.Helper()
	if got := c.count(withBody(event, body)); got != want {
		t.Errorf("%s: client %s on node %d got %q %d times, want %d", rule, c.name, c.node, body, got, want)
	}
}

// watchdog fails a hung implementation instead of letting it hang the run:
// when d passes it panics with every goroutine's stack.
func watchdog(t *testing.T, d time.Duration) {
	testkit.Watchdog(t, d, fmt.Sprintf("stackexchangetest: %s did not finish in %v: the exchange hangs", t.Name(), d))
}

// callTimeout bounds every single call that guard runs.
const callTimeout = 5 * time.Second

// guard runs call, one neffos call (Dial, Connect, JoinRoom, Leave,
// Disconnect, Broadcast, Close), and fails the rule when it is blocked for
// more than callTimeout: a call blocked that long is a deadlock, which
// would also block the test's cleanup, so guard panics with the rule, the
// call and every goroutine's stack rather than hang the run.
func guard(t *testing.T, what string, call func()) {
	timer := testkit.PanicAfter(callTimeout, fmt.Sprintf("stackexchangetest: %s: %s blocked for more than %v: the exchange deadlocks", t.Name(), what, callTimeout))
	defer timer.Stop()
	call()
}

var (
	errBoom    = errors.New("boom; ünïcødé error")
	errRefused = errors.New("refused by the server's OnConnect")
	// errKnown is what clients return to evQuestionErr; registered with
	// neffos, so neffos resolves its text back to this value.
	errKnown = errors.New("stackexchangetest: a known error")
)

func init() { neffos.RegisterKnownError(errKnown) }
