package stackexchangetest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout"
)

// Rules on the engine's own state: how an exchange starts when neffos and
// the app use it at once, and how far its queues can grow.

// testConcurrentStart: an exchange used from several goroutines at once
// before and while it starts (Server.UseStackExchange, which calls its
// Init, a Publish, and Stats when it has them) neither races (run under -race),
// panics nor blocks, and Init succeeds. A start that reads its names or
// prefix outside its once-only setup fails here.
func testConcurrentStart(t *testing.T, f Factory) {
	const rounds = 20
	nss := neffos.Namespaces{ns: neffos.Events{}}
	channel := uniqueChannel(t)
	for i := 0; i < rounds; i++ {
		exc := f(t, channel, scaleout.Options{})
		srv := neffos.New(gorilla.DefaultUpgrader, nss)
		var wg sync.WaitGroup
		var initErr error
		wg.Add(3)
		go func() {
			defer wg.Done()
			initErr = srv.UseStackExchange(exc)
		}()
		go func() {
			defer wg.Done()
			_ = exc.Publish([]neffos.Message{{Namespace: ns, Event: evMsg, Body: []byte("early")}})
		}()
		go func() {
			defer wg.Done()
			if s, ok := exc.(statser); ok {
				_ = s.Stats()
			}
		}()
		guard(t, fmt.Sprintf("round %d: Init, Publish and Stats at once", i), wg.Wait)
		srv.Close()
		if initErr != nil {
			t.Fatalf("round %d: UseStackExchange with a Publish and Stats at once: %v", i, initErr)
		}
		if c, ok := exc.(interface{ Close() error }); ok {
			if err := c.Close(); err != nil {
				t.Fatalf("round %d: Close: %v", i, err)
			}
		}
	}
}

// testBoundedBacklog: a node whose only client stopped reading takes a
// flood of broadcasts from another node. The node fans each message out
// as it reads it, so what waits for the client stays within its queue
// (Stats.Queued <= Conns x QueueSize at every sample: there is no other
// backlog to grow), the rest is dropped and counted (Stats.Dropped), and
// once the flood is read nothing is left waiting but the stalled client's
// queue. (The publishing node's Stats.Outbound is logged.)
// Exchanges without Stats are skipped: the rule is about counted bounds.
func testBoundedBacklog(t *testing.T, f Factory) {
	const queue, messages = 64, 5000
	cl := newClusterOpts(t, f, 2, []string{ns}, false, func(*node) scaleout.Options {
		return scaleout.Options{QueueSize: queue}
	})
	base := stats(cl)
	if base == nil {
		t.Skip("the exchange has no Stats() scaleout.Stats method")
	}
	slow, err := cl.dialWith("stalled", 1, dialOpts{slow: true}, ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(slow.sock.Unstall)
	slow.sock.Stall()

	var maxQueued, maxOutbound atomic.Int64
	var over atomic.Value // first violation seen by the sampler
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			for i, st := range stats(cl) {
				if st.Queued > st.Conns*queue && over.Load() == nil {
					over.Store(fmt.Sprintf("node %d: %d messages queued for %d connections of queue %d", i, st.Queued, st.Conns, queue))
				}
				if int64(st.Queued) > maxQueued.Load() {
					maxQueued.Store(int64(st.Queued))
				}
				if int64(st.Outbound) > maxOutbound.Load() {
					maxOutbound.Store(int64(st.Outbound))
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	for i := 0; i < messages; i++ {
		cl.nodes[0].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, Body: []byte("flood")})
	}
	// The flood is read once node 1 saw every message and node 0 sent them.
	read := waitUntil(60*time.Second, func() bool {
		st := stats(cl)
		return st[1].Received-base[1].Received >= messages && st[0].Outbound == 0
	})
	close(stop)
	<-sampled
	st := stats(cl)
	t.Logf("%d broadcasts to a stalled client: at most %d queued, %d outbound; %d dropped on its node", messages, maxQueued.Load(), maxOutbound.Load(), st[1].Dropped-base[1].Dropped)
	if !read {
		t.Fatalf("node 1 read %d of %d broadcasts within 60 s (node 0 outbound %d)", st[1].Received-base[1].Received, messages, st[0].Outbound)
	}
	if v := over.Load(); v != nil {
		t.Errorf("queue bound exceeded: %s", v)
	}
	if st[1].Queued > queue {
		t.Errorf("after the flood %d messages wait on node 1; only the stalled client's queue (%d) may", st[1].Queued, queue)
	}
	if st[1].Dropped == base[1].Dropped {
		t.Errorf("node 1 dropped nothing for a client that stopped reading: its queue is not bounded (or the socket never filled)")
	}
}
