package stackexchangetest

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// outage is how a fault rule takes the broker away and brings it back.
type outage struct {
	what       string
	length     time.Duration
	begin, end func(Process) error
	body       int           // bytes of padding in each traffic message
	every      time.Duration // each node publishes this often
	mustFail   bool          // some Publish must return false during it
}

var (
	outageKill      = outage{"SIGKILL, restart on the same address", 3 * time.Second, Process.Kill, Process.Restart, 0, 20 * time.Millisecond, true}
	outagePause     = outage{"SIGSTOP, SIGCONT", 5 * time.Second, Process.Pause, Process.Resume, 0, 20 * time.Millisecond, false}
	outagePauseLoad = outage{"SIGSTOP, SIGCONT, 16 KB messages every 5 ms", 5 * time.Second, Process.Pause, Process.Resume, 16 << 10, 5 * time.Millisecond, false}
)

// timingSlack is what a bounded call may take beyond its timeout on a
// loaded machine under -race: scheduling, not waiting.
const timingSlack = 500 * time.Millisecond

// pubCall is one Publish a node's traffic made on its exchange.
type pubCall struct {
	body       string
	start, end time.Time
	ok         bool
}

// publisher calls the exchange's Publish directly (the bool neffos's
// Broadcast drops) every o.every, and records each call.
type publisher struct {
	mu    sync.Mutex
	calls []pubCall
}

func (p *publisher) run(nd *node, o outage, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	pad := strings.Repeat("p", o.body)
	tick := time.NewTicker(o.every) // pacing
	defer tick.Stop()
	for k := 0; k < 100000; k++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		body := fmt.Sprintf("%d:%d:%s", nd.idx, k, pad)
		start := time.Now()
		ok := nd.exc.Publish([]neffos.Message{{Namespace: ns, Event: evBackground, Body: []byte(body)}})
		p.mu.Lock()
		p.calls = append(p.calls, pubCall{body: body, start: start, end: time.Now(), ok: ok})
		p.mu.Unlock()
	}
}

func (p *publisher) snapshot() []pubCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]pubCall(nil), p.calls...)
}

// testOutage: two nodes with a client each (a1, b1), both publishing
// through their exchange's Publish at a steady pace. The broker goes away
// as o says, for o.length; meanwhile a new client connects to each node
// (a2, b2). The rule fails unless:
//   - no Publish blocks past DefaultPublishTimeout, and, when the broker
//     was killed, some Publish returns false during the outage;
//   - each node's clients, old and new, get the node's own messages during
//     the outage (local delivery never waits for the broker);
//   - after the broker's return the nodes subscribe again by themselves,
//     cross-node delivery resumes both ways within 30 s (to a2 and b2
//     too), a message To a2 from the other node arrives and a Server.Ask
//     of a2 from the other node is answered;
//   - every local client got each of its node's messages exactly once and
//     no client got any message twice;
//   - once a2 and b2 left, the goroutine count returns to its level before
//     the outage (one more tolerated, for a helper of net/http or neffos
//     caught while it ends).
func testOutage(t *testing.T, ps []Process, f Factory, o outage) {
	cl := newCluster(t, f, 2, []string{ns}, false)
	a1, b1 := cl.dial("a1", 0, ns), cl.dial("b1", 1, ns)
	cl.barrier(ns, a1, b1)
	// A message To a client of the other node, before the baseline: a
	// broker may start a helper goroutine on its first one (nats.go's
	// response mux).
	for _, p := range []struct {
		from int
		to   *client
	}{{0, b1}, {1, a1}} {
		body := "warm-to-" + p.to.name
		cl.nodes[p.from].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, To: p.to.id, Body: []byte(body)})
		if !p.to.waitFor(10*time.Second, 1, withBody(evMsg, body)) {
			t.Fatalf("before the outage, a message To %s from node %d never arrived", p.to.name, p.from)
		}
	}
	before := runtime.NumGoroutine()

	pubs := []*publisher{{}, {}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, nd := range cl.nodes {
		wg.Add(1)
		go pubs[i].run(nd, o, stop, &wg)
	}
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer halt()
	from := func(node int) func(received) bool {
		prefix := fmt.Sprintf("%d:", node)
		return func(r received) bool { return r.event == evBackground && bytes.HasPrefix(r.body, []byte(prefix)) }
	}
	if !b1.waitFor(10*time.Second, 5, from(0)) || !a1.waitFor(10*time.Second, 5, from(1)) {
		t.Fatal("traffic did not cross nodes before the outage")
	}

	down := time.Now()
	if err := o.begin(ps[0]); err != nil {
		t.Fatalf("%s: %v", o.what, err)
	}
	ended := false
	defer func() {
		if !ended {
			_ = o.end(ps[0])
		}
	}()
	deadline := down.Add(o.length) // the waits below end with the outage
	t.Logf("outage begins (%s)", o.what)

	a2, err := cl.tryDial("a2", 0, ns)
	if err != nil {
		t.Fatalf("during the outage, a new client could not connect to node 0: %v", err)
	}
	b2, err := cl.tryDial("b2", 1, ns)
	if err != nil {
		t.Fatalf("during the outage, a new client could not connect to node 1: %v", err)
	}
	failedAt := func() time.Duration {
		for _, p := range pubs {
			for _, c := range p.snapshot() {
				if !c.ok && c.start.After(down) {
					return c.end.Sub(down)
				}
			}
		}
		return -1
	}
	// A killed broker refuses connections: Publish must say so. A paused
	// one may take a publish into a socket buffer (NATS), or not answer
	// (Redis): Publish may return false or not.
	if waitUntil(time.Until(deadline), func() bool { return failedAt() >= 0 }) {
		t.Logf("first Publish false %v after the outage began", failedAt().Round(time.Millisecond))
	} else if o.mustFail {
		t.Errorf("no Publish returned false during the outage")
	}
	for _, c := range []*client{a1, a2, b1, b2} {
		if !c.waitFor(max(time.Until(deadline), time.Second), c.count(from(c.node))+1, from(c.node)) {
			t.Errorf("during the outage, client %s got no more of its own node's messages", c.name)
		}
	}
	if d := time.Until(deadline); d > 0 {
		<-time.After(d) // the rest of the outage: part of the scenario
	}
	if err := o.end(ps[0]); err != nil {
		t.Fatalf("ending the outage: %v", err)
	}
	ended = true
	up := time.Now()

	crossed := func(node int, to ...*client) bool {
		for _, c := range pubs[node].snapshot() {
			if !c.ok || c.start.Before(up) {
				continue
			}
			all := true
			for _, r := range to {
				all = all && r.count(withBody(evBackground, c.body)) > 0
			}
			if all {
				return true
			}
		}
		return false
	}
	if !waitUntil(30*time.Second, func() bool { return crossed(0, b1, b2) && crossed(1, a1, a2) && resubscribed(t, cl) }) {
		t.Fatal("cross-node delivery did not resume, or the nodes did not subscribe again, within 30 s of the broker's return")
	}
	t.Logf("cross-node delivery resumed %v after the broker's return", time.Since(up).Round(time.Millisecond))
	cl.nodes[1].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, To: a2.id, Body: []byte("to-a2")})
	if !a2.waitFor(10*time.Second, 1, withBody(evMsg, "to-a2")) {
		t.Error("after the outage, a message To a2 (connected during it) from node 1 never arrived")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	reply, err := cl.nodes[1].srv.Ask(ctx, neffos.Message{Namespace: ns, Event: evQuestion, To: a2.id, Body: []byte("after")})
	cancel()
	if want := "answer:a2:after"; err != nil || string(reply.Body) != want {
		t.Errorf("after the outage, Server.Ask of a2 from node 1 = %q, %v; want %q", reply.Body, err, want)
	}

	halt()
	cl.barrier(ns, a1, a2, b1, b2)
	got := map[*client]map[string]int{}
	for _, c := range []*client{a1, a2, b1, b2} {
		got[c] = map[string]int{}
		for _, r := range c.messages() {
			if r.event == evBackground {
				got[c][string(r.body)]++
			}
		}
	}
	bound := scaleout.DefaultPublishTimeout + timingSlack
	for i, p := range pubs {
		calls := p.snapshot()
		var falses int
		var longest time.Duration
		local := map[int]*client{0: a1, 1: b1}[i]
		for _, c := range calls {
			d := c.end.Sub(c.start)
			longest = max(longest, d)
			if !c.ok {
				falses++
			}
			if d > bound {
				t.Errorf("node %d: Publish blocked %v, past DefaultPublishTimeout plus %v", i, d, timingSlack)
			}
			if n := got[local][c.body]; n != 1 {
				t.Errorf("local client %s got a message of node %d (Publish returned %v) %d times, want 1", local.name, i, c.ok, n)
			}
		}
		t.Logf("node %d: %d Publish calls, %d returned false, longest %v", i, len(calls), falses, longest.Round(time.Millisecond))
	}
	for _, c := range []*client{a1, a2, b1, b2} {
		dups := 0
		for _, n := range got[c] {
			dups += n - 1
		}
		if dups > 0 {
			t.Errorf("client %s got %d messages more than once", c.name, dups)
		}
	}

	a2.c.Close()
	b2.c.Close()
	if s := stats(cl); s != nil && !waitUntil(10*time.Second, func() bool {
		s = stats(cl)
		return s[0].Conns == 1 && s[1].Conns == 1
	}) {
		t.Errorf("after a2 and b2 left the nodes still track %d and %d connections", s[0].Conns, s[1].Conns)
	}
	var now int
	if !waitUntil(10*time.Second, func() bool { now = runtime.NumGoroutine(); return now <= before+1 }) {
		t.Errorf("%d goroutines after the outage, %d before it", now, before)
	}
}

// testCloseBrokerDown: Close of a started exchange whose broker was killed
// returns within 10 s, and leaves no goroutine behind; a second Close too.
func testCloseBrokerDown(t *testing.T, ps []Process, f Factory) {
	before := runtime.NumGoroutine()
	exc := f(t, uniqueChannel(t), scaleout.Options{})
	closer, ok := exc.(interface{ Close() error })
	if !ok {
		t.Skip("the exchange has no Close() error method")
	}
	if in, ok := exc.(neffos.StackExchangeInitializer); ok {
		if err := in.Init(neffos.Namespaces{ns: nil}); err != nil {
			t.Fatal(err)
		}
	}
	killAll(t, ps[0])
	exc.Publish([]neffos.Message{{Namespace: ns, Event: evMsg}}) // fails: the broker is gone
	done := make(chan error, 1)
	go func() { done <- closer.Close() }()
	select {
	case <-done: // an error from closing a dead connection is fine
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked with the broker down")
	}
	_ = closer.Close()
	var now int
	if !waitUntil(10*time.Second, func() bool { now = runtime.NumGoroutine(); return now <= before }) {
		t.Errorf("goroutines: %d before the exchange, %d after Close with the broker down", before, now)
	}
}
