package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
	nnats "github.com/kataras/neffos/stackexchange/nats"
	nredis "github.com/kataras/neffos/stackexchange/redis"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/neffostest"
	snats "github.com/neffos-contrib/scaleout/stackexchange/nats"
	sredis "github.com/neffos-contrib/scaleout/stackexchange/redis"
)

const (
	nsBench = "bench" // the N clients
	nsChurn = "churn" // fresh clients of the churn scenario
	room    = "r"     // every 4th client joins it
	evAsk   = "ask"   // Server.Ask; clients reply with the body
)

// exchanges, in report order.
// "none" is accepted on the command line for "none-sync" (exchangeAlias).
var allExchanges = []string{"none-sync", "none-async", "redis-builtin", "nats-builtin", "redis", "nats", "memory"}

var defaultExchanges = []string{"none-sync", "none-async", "redis-builtin", "nats-builtin", "redis", "nats"}

// exchangeAlias maps older command-line names to the report's.
var exchangeAlias = map[string]string{"none": "none-sync"}

func needsRedis(name string) bool { return name == "redis" || name == "redis-builtin" }
func needsNATS(name string) bool  { return name == "nats" || name == "nats-builtin" }

// node is one neffos server with its own exchange instance, as a separate
// machine would have.
type node struct {
	idx   int
	srv   *neffos.Server
	exc   neffos.StackExchange
	hs    *http.Server
	url   string
	conns sync.Map // conn id -> *neffos.Conn
}

type cluster struct {
	exchange string
	nodes    []*node
	broker   *proc
	mem      *scaleout.MemoryBroker
	clients  []*client // index = client idx; nil when its dial failed
}

func newExchange(name string, b *proc, mem *scaleout.MemoryBroker, prefix string) (neffos.StackExchange, error) {
	switch name {
	case "none-sync", "none-async":
		return nil, nil
	case "redis-builtin":
		e, err := nredis.NewStackExchange(nredis.Config{Addr: b.addr}, prefix)
		if err != nil {
			return nil, err
		}
		return e, nil
	case "nats-builtin":
		e, err := nnats.NewStackExchange("nats://" + b.addr)
		if err != nil {
			return nil, err
		}
		e.SubjectPrefix = prefix
		return e, nil
	case "redis":
		e, err := sredis.NewStackExchange(sredis.Config{Addr: b.addr}, prefix)
		if err != nil {
			return nil, err
		}
		return e, nil
	case "nats":
		e, err := snats.NewStackExchange("nats://" + b.addr)
		if err != nil {
			return nil, err
		}
		e.SubjectPrefix = prefix
		e.MonitorURL = b.mon
		return e, nil
	case "memory":
		return scaleout.New(mem.Broker(), prefix, scaleout.Options{}), nil
	}
	return nil, fmt.Errorf("unknown exchange %q", name)
}

// startCluster starts k nodes (1 for the references, none-*) on loopback.
func startCluster(name string, k int, b *proc) (*cluster, error) {
	if isReference(name) {
		k = 1
	}
	cl := &cluster{exchange: name, broker: b}
	if name == "memory" {
		cl.mem = scaleout.NewMemoryBroker()
	}
	prefix := fmt.Sprintf("bench%d", time.Now().UnixNano()%1e9)
	for i := 0; i < k; i++ {
		nd := &node{idx: i}
		nd.srv = neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{nsBench: neffos.Events{}, nsChurn: neffos.Events{}})
		if name == "none-sync" {
			// On neffos v0.0.24 the default async broadcaster coalesces
			// broadcasts sent in quick succession (each connection's
			// waiter reads only the latest batch), so a burst loses
			// messages; the synchronous one delivers each exactly once.
			// Both run (none-sync, none-async); the report takes the
			// faster one that lost nothing as the reference.
			nd.srv.SyncBroadcaster = true
		}
		nd.srv.OnConnect = func(c *neffos.Conn) error {
			nd.conns.Store(c.ID(), c)
			return nil
		}
		nd.srv.OnDisconnect = func(c *neffos.Conn) { nd.conns.Delete(c.ID()) }
		exc, err := newExchange(name, b, cl.mem, prefix)
		if err != nil {
			cl.close()
			return nil, fmt.Errorf("node %d: %s: %w", i, name, err)
		}
		if exc != nil {
			nd.exc = exc
			if err := nd.srv.UseStackExchange(exc); err != nil {
				cl.close()
				return nil, fmt.Errorf("node %d: UseStackExchange: %w", i, err)
			}
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			cl.close()
			return nil, err
		}
		nd.url = "ws://" + ln.Addr().String()
		nd.hs = &http.Server{Handler: neffostest.Handler(nd.srv), ReadHeaderTimeout: 10 * time.Second}
		go nd.hs.Serve(ln)
		cl.nodes = append(cl.nodes, nd)
	}
	return cl, nil
}

func (cl *cluster) close() {
	for _, c := range cl.clients {
		if c != nil {
			c.nc.Close()
		}
	}
	for _, nd := range cl.nodes {
		nd.srv.Close()
	}
	for _, nd := range cl.nodes {
		if c, ok := nd.exc.(interface{ Close() error }); ok {
			_ = c.Close()
		}
		if nd.hs != nil {
			_ = nd.hs.Close()
		}
	}
}

// serverConns is the number of websocket connections over all nodes.
func (cl *cluster) serverConns() uint64 {
	var n uint64
	for _, nd := range cl.nodes {
		n += nd.srv.GetTotalConnections()
	}
	return n
}

// brokerCount asks the broker server of this cluster.
func (cl *cluster) brokerCount() (brokerCount, error) {
	switch {
	case cl.broker == nil:
		return brokerCount{}, nil
	case cl.broker.kind == "redis":
		return redisCount(cl.broker.addr)
	default:
		return natsCount(cl.broker.mon)
	}
}

// waitSubsStable waits, at most d, until the broker's subscription count
// for the cluster reads the same three times in a row 50 ms apart.
func (cl *cluster) waitSubsStable(d time.Duration) {
	deadline := time.Now().Add(d)
	last, same := -1, 0
	for same < 3 && time.Now().Before(deadline) {
		bc, err := cl.brokerCount()
		if err != nil {
			return
		}
		if bc.Subs == last {
			same++
		} else {
			last, same = bc.Subs, 1
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// inspectorConns sums BrokerConns (scaleout.Exchange's and the adapters')
// over the nodes (ours only), to cross-check the server's count.
func (cl *cluster) inspectorConns() (int, bool) {
	total := 0
	for _, nd := range cl.nodes {
		in, ok := nd.exc.(interface {
			BrokerConns(context.Context) (int, error)
		})
		if !ok {
			return 0, false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		n, err := in.BrokerConns(ctx)
		cancel()
		if err != nil {
			return 0, false
		}
		total += n
	}
	return total, true
}

// ---------------------------------------------------------------- clients

// tally counts the deliveries of one scenario: each (client, message)
// pair once, and each message that arrives after a later one of the same
// publishing node (an order violation). Clients record into it from their
// reader goroutines (one per client, handling messages in arrival order).
type tally struct {
	event  string
	n      int            // messages
	k      int            // nodes (publishers)
	counts []atomic.Int32 // client idx * n + seq
	newest []atomic.Int32 // client idx * k + node: highest seq seen + 1 (0: none yet)
	total  atomic.Int64
	order  atomic.Int64 // order violations
	last   atomic.Int64 // unix nanos of the latest delivery
	bad    atomic.Int64 // unparsable bodies
	lat    bool
}

func newTally(event string, n, k, clients int, lat bool) *tally {
	return &tally{event: event, n: n, k: k, lat: lat,
		counts: make([]atomic.Int32, clients*n), newest: make([]atomic.Int32, clients*k)}
}

var current atomic.Pointer[tally]

// client is a real neffos Go client over a real websocket.
type client struct {
	idx  int
	node int
	id   string
	nc   *neffos.Client
	nsc  *neffos.NSConn
	sock *neffostest.Socket

	mu  sync.Mutex
	lat []int64 // latencies in ns of the current scenario (when tally.lat)
}

// body is "<seq>,<publishing node>,<unix nanos>". Each node publishes its
// messages in increasing seq.
func body(seq, node int, now time.Time) []byte {
	b := strconv.AppendInt(make([]byte, 0, 40), int64(seq), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(node), 10)
	b = append(b, ',')
	return strconv.AppendInt(b, now.UnixNano(), 10)
}

func parseBody(b []byte) (seq, node int, ts int64, ok bool) {
	var f [3]int64
	i := 0
	for j := range f {
		start := i
		for ; i < len(b) && b[i] != ','; i++ {
			if b[i] < '0' || b[i] > '9' {
				return 0, 0, 0, false
			}
			f[j] = f[j]*10 + int64(b[i]-'0')
		}
		if i == start || (j < 2) != (i < len(b)) {
			return 0, 0, 0, false // empty field, or too few / too many fields
		}
		i++ // the comma
	}
	return int(f[0]), int(f[1]), f[2], true
}

func (c *client) record(m neffos.Message) {
	t := current.Load()
	if t == nil || m.Event != t.event {
		return
	}
	seq, node, ts, ok := parseBody(m.Body)
	if !ok || seq >= t.n || node >= t.k {
		t.bad.Add(1)
		return
	}
	now := time.Now().UnixNano()
	t.counts[c.idx*t.n+seq].Add(1)
	// Only this client's reader goroutine touches its slots.
	if nw := &t.newest[c.idx*t.k+node]; int32(seq+1) < nw.Load() {
		t.order.Add(1)
	} else {
		nw.Store(int32(seq + 1))
	}
	t.total.Add(1)
	t.last.Store(now)
	if t.lat {
		c.mu.Lock()
		c.lat = append(c.lat, now-ts)
		c.mu.Unlock()
	}
}

func (c *client) handler(onMsg func(neffos.Message)) neffos.Namespaces {
	ev := neffos.Events{neffos.OnAnyEvent: func(_ *neffos.NSConn, m neffos.Message) error {
		if neffos.IsSystemEvent(m.Event) {
			return nil
		}
		if m.Event == evAsk {
			return neffos.Reply(m.Body)
		}
		onMsg(m)
		return nil
	}}
	return neffos.Namespaces{nsBench: ev, nsChurn: ev}
}

// dial connects a client to url and to namespace ns, bounded by d.
func dial(url, ns string, d time.Duration, c *client, onMsg func(neffos.Message)) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	dialer := neffostest.Dialer(false, func(s *neffostest.Socket) { c.sock = s })
	nc, err := neffos.Dial(ctx, dialer, url, c.handler(onMsg))
	if err != nil {
		return err
	}
	c.nc, c.id = nc, nc.ID
	c.sock.Settle()
	nsc, err := nc.Connect(ctx, ns)
	if err != nil {
		nc.Close()
		return fmt.Errorf("connect %q: %w", ns, err)
	}
	if nsc == nil {
		nc.Close()
		return errors.New("connect returned no namespace connection")
	}
	c.nsc = nsc
	return nil
}
