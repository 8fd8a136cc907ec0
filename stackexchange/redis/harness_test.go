package redis_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"
	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/internal/neffostest"
	"github.com/neffos-contrib/scaleout/internal/testkit"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// Helpers of the fault, hostile-input and auth tests : each test
// starts its own redis-server, real neffos nodes served on loopback, and
// real neffos Go clients.

const (
	hns    = "faults" // the namespace every node and client uses
	hevMsg = "msg"
)

// ownRedis starts a redis-server for this test only, on a free loopback
// port; the test's cleanup kills it by PID.
func ownRedis(t *testing.T, extra ...string) *brokertest.Redis {
	t.Helper()
	r, err := brokertest.StartRedis(extra...)
	if err != nil {
		brokertest.Missing(t, "redis-server", fmt.Sprintf("install redis-server: %v", err))
	}
	t.Cleanup(r.Stop)
	return r
}

// testChannel is a channel prefix unique to this test.
func testChannel(t *testing.T) string { return testkit.Name(t, "") }

// pubCall is one Publish neffos made on a node's exchange.
type pubCall struct {
	body  string
	start time.Time
	dur   time.Duration
	ok    bool
}

// timedExchange records how long each Publish neffos calls takes and what
// it returned. neffos's Server.Broadcast calls Publish synchronously, so
// its duration is how long neffos was blocked.
type timedExchange struct {
	engineExchange
	mu    sync.Mutex
	calls []pubCall
}

func (x *timedExchange) Publish(msgs []neffos.Message) bool {
	start := time.Now()
	ok := x.engineExchange.Publish(msgs)
	c := pubCall{start: start, dur: time.Since(start), ok: ok}
	if len(msgs) > 0 {
		c.body = string(msgs[0].Body)
	}
	x.mu.Lock()
	x.calls = append(x.calls, c)
	x.mu.Unlock()
	return ok
}

func (x *timedExchange) publishCalls() []pubCall {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]pubCall(nil), x.calls...)
}

// hnode is one neffos server with its own Redis exchange.
type hnode struct {
	name      string
	exc       *timedExchange
	eng       *scaleout.Exchange // under exc
	srv       *neffos.Server
	url       string
	prefix    string       // the exchange's channel prefix
	reports   atomic.Int64 // errors the exchange reported
	malformed atomic.Int64 // ... of which wrap scaleout.ErrMalformed
}

// engineExchange is what the tests use of an exchange: a
// *redis.StackExchange, or a *scaleout.Exchange built on redis.NewBroker.
type engineExchange interface {
	scaleout.StackExchange
	BrokerConns(ctx context.Context) (int, error)
}

// engineOf returns the engine under exc, whose ChannelOf and NodeID name
// the node's channels.
func engineOf(exc engineExchange) *scaleout.Exchange {
	if s, ok := exc.(*redis.StackExchange); ok {
		return redis.Engine(s)
	}
	return exc.(*scaleout.Exchange)
}

func startNode(t *testing.T, name string, cfg redis.Config, channel string) *hnode {
	t.Helper()
	return startNodeWith(t, name, func(onErr func(error)) (engineExchange, error) {
		return redis.NewStackExchangeOptions(cfg, channel, scaleout.Options{ErrorHandler: onErr})
	})
}

// startNodeWith starts a node on the exchange build returns; build passes
// onErr on as the exchange's Options.ErrorHandler.
func startNodeWith(t *testing.T, name string, build func(onErr func(error)) (engineExchange, error)) *hnode {
	t.Helper()
	n := &hnode{name: name}
	exc, err := build(func(err error) {
		n.reports.Add(1)
		if errors.Is(err, scaleout.ErrMalformed) {
			n.malformed.Add(1)
		}
	})
	if err != nil {
		t.Fatalf("node %s: building the exchange: %v", name, err)
	}
	n.exc = &timedExchange{engineExchange: exc}
	n.eng = engineOf(exc)
	n.prefix = strings.TrimSuffix(n.eng.ChannelOf("x"), ".ns.x")
	n.srv = neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{hns: neffos.Events{}})
	if err := n.srv.UseStackExchange(n.exc); err != nil {
		_ = exc.Close()
		t.Fatalf("node %s: UseStackExchange: %v", name, err)
	}
	t.Cleanup(func() {
		n.srv.Close()
		_ = exc.Close()
	})
	n.url = neffostest.Serve(t, n.srv)
	return n
}

// nodeChannel is the node's own channel (Ask replies).
func (n *hnode) nodeChannel() string { return n.prefix + ".node." + n.eng.NodeID() }

// connChannel is the channel of a client id (neffos ids are UUIDs, which
// the channel names keep as they are).
func (n *hnode) connChannel(id string) string { return n.prefix + ".c." + id }

// broadcast sends body to every client of the namespace, through neffos,
// and returns how long neffos's Broadcast blocked.
func (n *hnode) broadcast(body string) time.Duration {
	start := time.Now()
	n.srv.Broadcast(nil, neffos.Message{Namespace: hns, Event: hevMsg, Body: []byte(body)})
	return time.Since(start)
}

func (n *hnode) broadcastTo(id, body string) {
	n.srv.Broadcast(nil, neffos.Message{Namespace: hns, Event: hevMsg, To: id, Body: []byte(body)})
}

// hclient is a real neffos Go client connected to the namespace hns. It
// records every hevMsg body it gets.
type hclient struct {
	name   string
	id     string
	c      *neffostest.Client
	mu     sync.Mutex
	got    map[string]int
	total  int
	notify chan struct{}
}

func dialClient(t *testing.T, name string, n *hnode) *hclient {
	t.Helper()
	c, err := tryDialClient(name, n)
	if err != nil {
		t.Fatalf("dial %s to node %s: %v", name, n.name, err)
	}
	t.Cleanup(c.c.Close)
	return c
}

func tryDialClient(name string, n *hnode) (*hclient, error) {
	hc := &hclient{name: name, got: map[string]int{}, notify: make(chan struct{}, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := neffostest.Dial(ctx, n.url, neffos.Namespaces{hns: neffos.Events{
		hevMsg: func(_ *neffos.NSConn, m neffos.Message) error {
			hc.record(string(m.Body))
			return nil
		},
	}})
	if err != nil {
		return nil, err
	}
	if _, err := c.Connect(ctx, hns); err != nil {
		c.Close()
		return nil, fmt.Errorf("connect %q: %w", hns, err)
	}
	hc.c, hc.id = c, c.ID
	return hc, nil
}

func (c *hclient) record(body string) {
	c.mu.Lock()
	c.got[body]++
	c.total++
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *hclient) count(body string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[body]
}

func (c *hclient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// waitFor waits until cond holds, re-checking whenever c records a
// message, at most d.
func (c *hclient) waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-c.notify:
		case <-deadline.C:
			return cond()
		}
	}
}

func (c *hclient) waitBody(d time.Duration, body string) bool {
	return c.waitFor(d, func() bool { return c.count(body) > 0 })
}

// deliverAll broadcasts body from n and fails unless every client in to
// gets it within d.
func deliverAll(t *testing.T, n *hnode, body string, d time.Duration, to ...*hclient) {
	t.Helper()
	n.broadcast(body)
	for _, c := range to {
		if !c.waitBody(d, body) {
			t.Fatalf("client %s never got %q broadcast by node %s", c.name, body, n.name)
		}
	}
}

// barrier broadcasts a fence from every node and waits until every client
// got each. Redis keeps each connection's order, and a node's deliveries
// are in its receive order, so afterwards everything published before has
// arrived.
func barrier(t *testing.T, tag string, nodes []*hnode, clients ...*hclient) {
	t.Helper()
	for _, n := range nodes {
		deliverAll(t, n, "fence-"+tag+"-"+n.name, 20*time.Second, clients...)
	}
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(d time.Duration, cond func() bool) bool { return testkit.Until(d, cond) }

// waitGoroutines waits until at most max goroutines run, at most d. It
// returns the last count.
func waitGoroutines(max int, d time.Duration) (int, bool) {
	var n int
	ok := waitUntil(d, func() bool {
		n = runtime.NumGoroutine()
		return n <= max
	})
	return n, ok
}

// checkGoroutines fails the test unless the goroutine count comes back to
// at most base+tolerance within 10s, and logs the stacks when it does not.
func checkGoroutines(t *testing.T, what string, base, tolerance int) int {
	t.Helper()
	n, ok := waitGoroutines(base+tolerance, 10*time.Second)
	if !ok {
		var buf bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
		t.Errorf("%s: %d goroutines, want at most %d (before: %d, tolerance %d)\n%s", what, n, base+tolerance, base, tolerance, buf.String())
	}
	return n
}

// rawClient is a plain go-redis client for looking at the broker or
// publishing onto its channels directly.
func rawClient(t *testing.T, opt *goredis.Options) *goredis.Client {
	t.Helper()
	opt.MaxRetries = -1
	if opt.PoolSize == 0 {
		opt.PoolSize = 1
	}
	c := goredis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitSubscribed waits until Redis counts the wanted number of subscribers
// on each channel (PUBSUB NUMSUB), at most d, and returns the last counts.
func waitSubscribed(raw *goredis.Client, want map[string]int64, d time.Duration) (map[string]int64, bool) {
	chans := make([]string, 0, len(want))
	for ch := range want {
		chans = append(chans, ch)
	}
	sort.Strings(chans)
	var got map[string]int64
	ok := waitUntil(d, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		m, err := raw.PubSubNumSub(ctx, chans...).Result()
		if err != nil {
			return false
		}
		got = m
		for ch, n := range want {
			if m[ch] != n {
				return false
			}
		}
		return true
	})
	return got, ok
}

// watchdog panics with every goroutine's stack when the test hangs.
func watchdog(t *testing.T, d time.Duration) {
	testkit.Watchdog(t, d, fmt.Sprintf("%s did not finish in %v", t.Name(), d))
}
