package redis_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// defaultPublishTimeout is scaleout.Options.PublishTimeout's default, which
// the fault tests leave unset.
const defaultPublishTimeout = 2 * time.Second

// timingSlack is added to every bound on how long a call may block: the
// timeouts are measured from inside the call, and -race slows the rest.
const timingSlack = 500 * time.Millisecond

// goroutineTolerance is how many goroutines above the level before an
// outage the test accepts once everything settled, waiting up to 10s for
// it. Everything the exchange starts per connection (queue drainers), per
// reconnect or per failed dial (go-redis's pool retries a failing dial from
// one goroutine, which ends with the first successful dial) exits on its
// own, and in every run so far the count came back exactly. One is
// tolerated for a goroutine outside our control caught at the moment of
// sampling (neffos finishing a2's server side asynchronously, a net/http
// or runtime helper); a leak tied to the outage would scale with its
// hundreds of failed publishes and reconnect attempts, and one cannot hide
// it.
const goroutineTolerance = 1

// TestFaultRedisKilled kills redis-server (SIGKILL)
// mid-traffic and restarts it 3 s later on the same port.
func TestFaultRedisKilled(t *testing.T) {
	runOutage(t, outageScenario{
		what:   "SIGKILL, restart on the same port",
		length: 3 * time.Second,
		begin:  (*brokertest.Redis).Kill,
		end:    (*brokertest.Redis).Restart,
	})
}

// TestFaultRedisPaused pauses redis-server (SIGSTOP)
// for 5 s, then continues it (SIGCONT). Its sockets stay open and the kernel
// keeps accepting connections, so only timeouts can notice.
func TestFaultRedisPaused(t *testing.T) {
	runOutage(t, outageScenario{
		what:   "SIGSTOP, SIGCONT",
		length: 5 * time.Second,
		begin:  (*brokertest.Redis).Pause,
		end:    (*brokertest.Redis).Resume,
	})
}

type outageScenario struct {
	what       string
	length     time.Duration
	begin, end func(*brokertest.Redis) error
}

// runOutage: two nodes A and B on a redis-server of the test's own, clients
// a1 on A and b1 on B, both nodes broadcasting every 20 ms. The broker goes
// away for o.length; meanwhile a2 connects to A. Then:
//   - no Publish (so no neffos Broadcast) blocks past PublishTimeout, and
//     Publish returns false during the outage;
//   - a1 and a2 get every broadcast of A, b1 every broadcast of B, the
//     outage included (local delivery never depends on the broker);
//   - after the broker is back the nodes resubscribe every channel by
//     themselves (PUBSUB NUMSUB), cross-node delivery and To delivery
//     resume, and no client got any message twice;
//   - the goroutine count returns to its level before the outage.
func runOutage(t *testing.T, o outageScenario) {
	watchdog(t, 90*time.Second)
	r := ownRedis(t)
	cfg := redis.Config{Addr: r.Addr, DialTimeout: time.Second} // PublishTimeout: default
	channel := testChannel(t)
	a := startNode(t, "A", cfg, channel)
	b := startNode(t, "B", cfg, channel)
	nodes := []*hnode{a, b}
	a1 := dialClient(t, "a1", a)
	b1 := dialClient(t, "b1", b)
	raw := rawClient(t, &goredis.Options{Addr: r.Addr})

	deliverAll(t, a, "healthy-A", 10*time.Second, a1, b1)
	deliverAll(t, b, "healthy-B", 10*time.Second, a1, b1)
	if got, ok := waitSubscribed(raw, map[string]int64{
		a.eng.ChannelOf(hns): 2, a.nodeChannel(): 1, b.nodeChannel(): 1,
		a.connChannel(a1.id): 1, b.connChannel(b1.id): 1,
	}, 10*time.Second); !ok {
		t.Fatalf("before the outage: subscribers %v", got)
	}
	before := runtime.NumGoroutine()

	// Traffic: each node broadcasts "<node>-<n>" every 20 ms.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var maxBroadcastMu sync.Mutex
	var maxBroadcast time.Duration
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(20 * time.Millisecond) // pacing
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				d := n.broadcast(fmt.Sprintf("%s-%d", n.name, i))
				maxBroadcastMu.Lock()
				maxBroadcast = max(maxBroadcast, d)
				maxBroadcastMu.Unlock()
			}
		}()
	}
	stopTraffic := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopTraffic()

	// Mid-traffic: wait until traffic crossed nodes both ways.
	if !b1.waitFor(10*time.Second, func() bool { n, _ := b1.countPrefix("A-"); return n >= 5 }) ||
		!a1.waitFor(10*time.Second, func() bool { n, _ := a1.countPrefix("B-"); return n >= 5 }) {
		t.Fatal("traffic did not cross nodes before the outage")
	}

	// Sample the goroutine count during the outage: a retry storm or a
	// goroutine per attempt would show.
	var peakMu sync.Mutex
	peak := 0
	sampleStop := make(chan struct{})
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			peakMu.Lock()
			peak = max(peak, runtime.NumGoroutine())
			peakMu.Unlock()
			select {
			case <-sampleStop:
				return
			case <-tick.C:
			}
		}
	}()

	pid := r.PID()
	down := time.Now()
	if err := o.begin(r); err != nil {
		t.Fatalf("%s: %v", o.what, err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = o.end(r)
		}
	}()
	deadline := down.Add(o.length) // every wait below ends with the outage
	t.Logf("outage begins (%s, PID %d), %d goroutines before", o.what, pid, before)

	// During the outage a new websocket client is accepted ...
	dialStart := time.Now()
	a2, err := tryDialClient("a2", a)
	if err != nil {
		t.Fatalf("during the outage, a new client could not connect: %v", err)
	}
	t.Cleanup(a2.c.Close)
	t.Logf("a2 dialed and connected to node A during the outage in %v", time.Since(dialStart).Round(time.Millisecond))
	// ... A's Publish fails (returns false) ...
	firstFail := time.Duration(-1)
	if waitUntil(time.Until(deadline), func() bool {
		for _, c := range a.exc.publishCalls() {
			if !c.ok && c.start.After(down) {
				firstFail = c.start.Add(c.dur).Sub(down)
				return true
			}
		}
		return false
	}) {
		t.Logf("first failed Publish on A returned %v after the outage began", firstFail.Round(time.Millisecond))
	} else {
		t.Errorf("no Publish on node A returned false during the outage")
	}
	// ... and a2 is served locally: it gets A's broadcasts.
	if !a2.waitFor(time.Until(deadline), func() bool { n, _ := a2.countPrefix("A-"); return n >= 1 }) {
		t.Errorf("a2, connected during the outage, got none of node A's broadcasts during it")
	}
	if d := time.Until(deadline); d > 0 {
		<-time.After(d) // the rest of the outage: part of the scenario
	}
	if n, _ := a2.countPrefix("A-"); true {
		t.Logf("during the outage a2 got %d of node A's broadcasts", n)
	}
	upStart := time.Now()
	if err := o.end(r); err != nil {
		t.Fatalf("ending the outage: %v", err)
	}
	resumed = true
	up := time.Now()
	outage := up.Sub(down)
	t.Logf("outage ends after %v (end took %v)", outage.Round(time.Millisecond), up.Sub(upStart).Round(time.Millisecond))

	// Recovery: a broadcast published after the broker came back crosses
	// nodes, both ways, to clients connected before and during the outage.
	crossed := func(from *hnode, to ...*hclient) bool {
		for _, c := range from.exc.publishCalls() {
			if !c.ok || c.start.Before(up) {
				continue
			}
			all := true
			for _, cl := range to {
				all = all && cl.count(c.body) > 0
			}
			if all {
				return true
			}
		}
		return false
	}
	if !waitUntil(30*time.Second, func() bool { return crossed(a, b1) && crossed(b, a1, a2) }) {
		t.Fatalf("cross-node delivery did not resume within 30s of the restart")
	}
	recovered := time.Since(up)
	t.Logf("cross-node delivery resumed %v after the broker came back", recovered.Round(time.Millisecond))

	want := map[string]int64{
		a.eng.ChannelOf(hns): 2, a.nodeChannel(): 1, b.nodeChannel(): 1,
		a.connChannel(a1.id): 1, a.connChannel(a2.id): 1, b.connChannel(b1.id): 1,
	}
	if got, ok := waitSubscribed(raw, want, 10*time.Second); !ok {
		t.Fatalf("after the outage the nodes did not resubscribe every channel: got %v, want %v", got, want)
	}
	b.broadcastTo(a2.id, "to-a2")
	if !a2.waitBody(10*time.Second, "to-a2") {
		t.Errorf("a message To a2 (connected during the outage) from node B never arrived")
	}

	stopTraffic()
	close(sampleStop)
	<-sampleDone
	barrier(t, "end", nodes, a1, a2, b1)

	// Publish: bounded, false during the outage.
	var failed, total int
	var maxDur time.Duration
	var lastFail time.Time
	for _, n := range nodes {
		for _, c := range n.exc.publishCalls() {
			total++
			maxDur = max(maxDur, c.dur)
			if !c.ok {
				failed++
				if end := c.start.Add(c.dur); end.After(lastFail) {
					lastFail = end
				}
			}
			if c.dur > defaultPublishTimeout+timingSlack {
				t.Errorf("node %s: Publish of %q blocked %v, past PublishTimeout %v", n.name, c.body, c.dur, defaultPublishTimeout)
			}
		}
	}
	if maxBroadcast > defaultPublishTimeout+timingSlack {
		t.Errorf("a neffos Broadcast blocked %v, past PublishTimeout %v", maxBroadcast, defaultPublishTimeout)
	}
	t.Logf("Publish: %d calls, %d returned false (last one ended %v after the broker came back); longest Publish %v, longest Broadcast %v",
		total, failed, lastFail.Sub(up).Round(time.Millisecond), maxDur.Round(time.Millisecond), maxBroadcast.Round(time.Millisecond))

	// Local clients got every broadcast of their node, outage included,
	// exactly once; nobody got anything twice.
	for _, tc := range []struct {
		n     *hnode
		local []*hclient
		other []*hclient
	}{{a, []*hclient{a1}, []*hclient{b1}}, {b, []*hclient{b1}, []*hclient{a1, a2}}} {
		sent := 0
		for _, c := range tc.n.exc.publishCalls() {
			if !strings.HasPrefix(c.body, tc.n.name+"-") {
				continue
			}
			sent++
			for _, cl := range tc.local {
				if got := cl.count(c.body); got != 1 {
					t.Errorf("local client %s got %q (node %s, ok=%v) %d times, want 1", cl.name, c.body, tc.n.name, c.ok, got)
				}
			}
		}
		for _, cl := range append(tc.local, tc.other...) {
			distinct, dup := cl.countPrefix(tc.n.name + "-")
			if dup > 0 {
				t.Errorf("client %s got %d of node %s's broadcasts more than once", cl.name, dup, tc.n.name)
			}
			t.Logf("node %s broadcast %d messages; client %s got %d of them", tc.n.name, sent, cl.name, distinct)
		}
	}

	// Goroutines: a2 leaves, then everything returns to the level before.
	a2.c.Close()
	if !waitUntil(10*time.Second, func() bool { return a.exc.Stats().Conns == 1 }) {
		t.Errorf("node A still tracks %d connections after a2 left", a.exc.Stats().Conns)
	}
	after := checkGoroutines(t, "after the outage", before, goroutineTolerance)
	peakMu.Lock()
	t.Logf("goroutines: %d before the outage, peak %d during it (a2 and the test's samplers included), %d after", before, peak, after)
	peakMu.Unlock()
	st := a.exc.Stats()
	t.Logf("node A stats: %+v; errors reported: %d", st, a.reports.Load())
}

// TestFaultRedisUnreachableAtStart starts while the broker cannot be
// reached when the exchange is built. NewStackExchange returns an error
// wrapping scaleout.ErrBrokerUnavailable within DialTimeout and leaves no
// goroutine behind, both for a closed port (refused at once) and for a
// redis-server that is paused (the kernel accepts the connection, nobody
// answers: only the timeout can end the wait).
func TestFaultRedisUnreachableAtStart(t *testing.T) {
	const dialTimeout = time.Second
	t.Run("ClosedPort", func(t *testing.T) {
		port, err := brokertest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		checkUnreachable(t, redis.Config{Addr: fmt.Sprintf("127.0.0.1:%d", port), DialTimeout: dialTimeout}, dialTimeout)
	})
	t.Run("PausedServer", func(t *testing.T) {
		r := ownRedis(t)
		if err := r.Pause(); err != nil {
			t.Fatal(err)
		}
		defer r.Resume()
		checkUnreachable(t, redis.Config{Addr: r.Addr, DialTimeout: dialTimeout}, dialTimeout)
	})
}

// checkUnreachable builds an exchange that must fail with
// ErrBrokerUnavailable within bound, leaving no goroutine, and returns the
// error.
func checkUnreachable(t *testing.T, cfg redis.Config, bound time.Duration) error {
	t.Helper()
	before := runtime.NumGoroutine()
	start := time.Now()
	exc, err := redis.NewStackExchange(cfg, testChannel(t))
	took := time.Since(start)
	if err == nil {
		_ = exc.Close()
		t.Fatalf("NewStackExchange(%s) returned no error", cfg.Addr)
	}
	if !errors.Is(err, scaleout.ErrBrokerUnavailable) {
		t.Errorf("error %q does not wrap scaleout.ErrBrokerUnavailable", err)
	}
	if took > bound+timingSlack {
		t.Errorf("NewStackExchange took %v, bound %v", took, bound)
	}
	after := checkGoroutines(t, "after the failed NewStackExchange", before, 0)
	t.Logf("error after %v: %v; goroutines %d before, %d after", took.Round(time.Millisecond), err, before, after)
	return err
}
