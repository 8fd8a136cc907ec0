package stackexchangetest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// Rules where user code that neffos or the exchange calls (event handlers,
// ErrorHandler, Logger) calls back into the exchange while the nodes are
// busy: any engine lock held across such a call closes a cycle. Every
// neffos call these rules make runs through guard, so a deadlock fails the
// rule within callTimeout.

// testXLeft: thousands of clients connect, join a room and leave (room
// leave then namespace disconnect, close while joined, namespace disconnect
// while joined), spread over the nodes by parallel dialers, while every
// node broadcasts continuously. The server's OnRoomLeft and
// OnNamespaceDisconnect of each leaver broadcast "X left" with
// Server.Broadcast(nsConn, ...), from inside neffos's connection lock.
// Every such message reaches every watcher (connected throughout, on every
// node) exactly once and never the leaver; every continuous broadcast
// reaches every watcher exactly once.
//
// The watchers' traffic goes to room roomWatch, which leavers never join:
// a neffos v0.0.24 client that asks (JoinRoom, Leave, Disconnect) while its
// reader handles a frame races inside neffos, and leavers ask all the
// time. The exchange still looks at every connection of the namespace,
// leavers included, for every message.
func testXLeft(t *testing.T, f Factory) {
	const rule = "Handlers/XLeft"
	cycles, bound := 2000, 75*time.Second
	if testing.Short() {
		cycles, bound = 500, 25*time.Second
	}
	const watchersPerNode, parallel = 2, 16
	const broadcastEvery, maxBroadcasts = 5 * time.Millisecond, 30000
	cl := newCluster(t, f, Nodes, []string{nsXLeft}, false)
	g := dialOpts{guard: t}
	watchers := spreadGuarded(t, cl, rule, "watcher", watchersPerNode, nsXLeft)
	for _, c := range watchers {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var err error
		guard(t, "JoinRoom "+c.name, func() { _, err = c.join(ctx, nsXLeft, roomWatch) })
		cancel()
		if err != nil {
			t.Fatalf("%s: watcher joins %q: %v", rule, roomWatch, err)
		}
	}

	// Every node broadcasts, bounded, until the churn is over.
	stop := make(chan struct{})
	sent := make([]int, Nodes) // per node; each written by its broadcaster only
	var bwg sync.WaitGroup
	for _, nd := range cl.nodes {
		bwg.Add(1)
		go func() {
			defer bwg.Done()
			for i := 0; i < maxBroadcasts; i++ {
				select {
				case <-stop:
					return
				default:
				}
				m := neffos.Message{Namespace: nsXLeft, Room: roomWatch, Event: evMsg, Body: []byte(fmt.Sprintf("b%d:%d", nd.idx, i))}
				guard(t, fmt.Sprintf("Broadcast from node %d", nd.idx), func() { nd.srv.Broadcast(nil, m) })
				sent[nd.idx] = i + 1
				time.Sleep(broadcastEvery)
			}
		}()
	}

	leavers := make([]*client, cycles) // by cycle; each slot written by one worker
	var failed failures
	cycle := func(i int) {
		name := fmt.Sprintf("leaver%d", i)
		c, err := cl.dialWith(name, i%Nodes, g, nsXLeft)
		if err != nil {
			failed.add(fmt.Errorf("dial %s: %w", name, err))
			return
		}
		defer guard(t, "Close "+name, c.c.Close)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		nsc := c.nsc[nsXLeft]
		var room *neffos.Room
		guard(t, "JoinRoom "+name, func() { c.settle(); room, err = nsc.JoinRoom(ctx, "r") })
		if err != nil {
			failed.add(fmt.Errorf("%s: JoinRoom: %w", name, err))
			return
		}
		leavers[i] = c
		switch i % 3 {
		case 0: // leave the room, then the namespace
			guard(t, "Room.Leave "+name, func() { c.settle(); err = room.Leave(ctx) })
			if err == nil {
				guard(t, "NSConn.Disconnect "+name, func() { c.settle(); err = nsc.Disconnect(ctx) })
			}
		case 1: // close while joined: the server fires both, forced, under its lock
		case 2: // leave the namespace while joined
			guard(t, "NSConn.Disconnect "+name, func() { c.settle(); err = nsc.Disconnect(ctx) })
		}
		if err != nil {
			failed.add(fmt.Errorf("%s: leave: %w", name, err))
		}
	}
	start := time.Now()
	deadline := start.Add(bound)
	done := runParallel(parallel, func(i int) bool { return i < cycles && time.Now().Before(deadline) }, cycle)
	close(stop)
	bwg.Wait()
	t.Logf("%d connect/join/leave cycles in %v; broadcasts per node: %v", done, time.Since(start).Round(time.Millisecond), sent)
	if done < cycles {
		t.Errorf("%s: only %d of %d cycles ran within %v", rule, done, cycles, bound)
	}
	if n, first := failed.get(); n > 0 {
		t.Errorf("%s: %d of %d cycles failed, first: %v", rule, n, done, first)
	}

	want := map[string]bool{}
	for _, c := range leavers {
		if c != nil {
			want["room:"+c.id] = true
			want["ns:"+c.id] = true
		}
	}
	// A server runs a leaver's handlers when it notices the close, maybe
	// after the client's Close returned: wait for their messages (missing
	// ones are reported below), then a barrier catches duplicates.
	for _, w := range watchers {
		w.waitFor(20*time.Second, len(want), func(r received) bool { return r.event == evLeft })
	}
	guard(t, "barrier", func() { cl.barrier(nsXLeft, watchers...) })

	for _, w := range watchers {
		left, msgs := map[string]int{}, map[string]int{}
		for _, r := range w.messages() {
			switch r.event {
			case evLeft:
				left[string(r.body)]++
			case evMsg:
				msgs[string(r.body)]++
			}
		}
		var missing, dup, stray []string
		for body := range want {
			switch n := left[body]; {
			case n == 0:
				missing = append(missing, body)
			case n > 1:
				dup = append(dup, fmt.Sprintf("%s x%d", body, n))
			}
		}
		for body := range left {
			if !want[body] {
				stray = append(stray, body)
			}
		}
		if len(missing)+len(dup)+len(stray) > 0 {
			t.Errorf("%s: watcher %s on node %d: of %d \"X left\" messages (Broadcast(nsConn) from OnRoomLeft/OnNamespaceDisconnect) %d missing %v, %d duplicated %v, %d unexpected %v; want each exactly once",
				rule, w.name, w.node, len(want), len(missing), first(missing), len(dup), first(dup), len(stray), first(stray))
		}
		var lost, twice []string
		for n, k := range sent {
			for i := 0; i < k; i++ {
				body := fmt.Sprintf("b%d:%d", n, i)
				switch msgs[body] {
				case 0:
					lost = append(lost, body)
				case 1:
				default:
					twice = append(twice, body)
				}
			}
		}
		if len(lost)+len(twice) > 0 {
			t.Errorf("%s: watcher %s on node %d: of %d broadcasts sent during the churn %d missing %v, %d duplicated %v; want each exactly once",
				rule, w.name, w.node, sent[0]+sent[1]+sent[2], len(lost), first(lost), len(twice), first(twice))
		}
	}
	var own []string
	for _, c := range leavers {
		if c == nil {
			continue
		}
		for _, body := range []string{"room:" + c.id, "ns:" + c.id} {
			if c.count(withBody(evLeft, body)) > 0 {
				own = append(own, c.name+" got "+body)
			}
		}
	}
	if len(own) > 0 {
		t.Errorf("%s: %d leavers got their own \"X left\" message, which Broadcast(nsConn) excludes: %v", rule, len(own), first(own))
	}
}

// first returns up to 5 of s, for failure messages.
func first(s []string) []string { return s[:min(len(s), 5)] }

// testSlowErrorHandler: the engine options carry an ErrorHandler that reads
// the exchange's Stats and sleeps 50 ms, and a Logger whose every record
// takes 20 ms, with QueueSize 64. A stalled client on every node is sent
// far more than 64 messages (ErrSlowConsumer) while 300 clients connect
// through 32 parallel dialers and every node broadcasts. The storm
// completes (no call blocked for callTimeout), every healthy client gets
// every broadcast exactly once, and the ErrorHandler did see
// scaleout.ErrSlowConsumer.
func testSlowErrorHandler(t *testing.T, f Factory) {
	const rule = "Handlers/SlowErrorHandler"
	const storm, parallel, queue = 300, 32, 64
	const healthyPerNode, broadcasts, flood = 2, 40, 300
	var (
		slowReports, handled atomic.Int64
		logged               atomic.Int64
	)
	opts := func(nd *node) scaleout.Options {
		return scaleout.Options{
			QueueSize: queue,
			ErrorHandler: func(err error) {
				s, _ := nd.exc.(statser) // scaleout.StackExchange has Stats
				if s != nil {
					_ = s.Stats()
				}
				time.Sleep(50 * time.Millisecond)
				if s != nil {
					_ = s.Stats()
				}
				handled.Add(1)
				if errors.Is(err, scaleout.ErrSlowConsumer) {
					slowReports.Add(1)
				}
			},
			Logger: slog.New(slog.NewTextHandler(sleepyWriter{d: 20 * time.Millisecond, n: &logged}, nil)),
		}
	}
	cl := newClusterOpts(t, f, Nodes, []string{ns}, false, opts)
	g := dialOpts{guard: t}
	healthy := spreadGuarded(t, cl, rule, "healthy", healthyPerNode, ns)
	var slow []*client
	for i := range cl.nodes {
		o := g
		o.slow = true
		c, err := cl.dialWith(fmt.Sprintf("stalled%d", i), i, o, ns)
		if err != nil {
			t.Fatalf("%s: dial stalled client: %v", rule, err)
		}
		t.Cleanup(c.sock.Unstall)
		c.sock.Stall()
		slow = append(slow, c)
	}

	var dialed atomic.Int64
	var bg sync.WaitGroup
	// Every node broadcasts during the storm.
	for _, nd := range cl.nodes {
		bg.Add(1)
		go func() {
			defer bg.Done()
			for i := 0; i < broadcasts; i++ {
				m := neffos.Message{Namespace: ns, Event: evMsg, Body: []byte(fmt.Sprintf("h%d:%d", nd.idx, i))}
				guard(t, fmt.Sprintf("Broadcast from node %d", nd.idx), func() { nd.srv.Broadcast(nil, m) })
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	// Each stalled client is flooded from another node at its own point of
	// the storm, so its node reports ErrSlowConsumer while clients connect.
	bg.Add(1)
	go func() {
		defer bg.Done()
		body := make([]byte, 1024)
		for k, c := range slow {
			waitUntil(20*time.Second, func() bool { return dialed.Load() >= int64((k+1)*storm/(len(slow)+1)) })
			from := cl.nodes[(c.node+1)%Nodes]
			for i := 0; i < flood; i++ {
				m := neffos.Message{Namespace: ns, Event: evMsg, To: c.id, Body: body}
				guard(t, fmt.Sprintf("Broadcast To the stalled client from node %d", from.idx), func() { from.srv.Broadcast(nil, m) })
			}
		}
	}()

	stormers := make([]*client, storm)
	var failed failures
	start := time.Now()
	runParallel(parallel, func(i int) bool { return i < storm }, func(i int) {
		c, err := cl.dialWith(fmt.Sprintf("storm%d", i), i%Nodes, g, ns)
		dialed.Add(1)
		if failed.add(err) {
			return
		}
		stormers[i] = c
	})
	nFailed, firstErr := failed.get()
	t.Logf("%d clients connected in %v", storm-nFailed, time.Since(start).Round(time.Millisecond))
	bg.Wait()
	if nFailed > 0 {
		t.Errorf("%s: %d of %d storm clients failed to connect, first: %v", rule, nFailed, storm, firstErr)
	}

	var all []*client
	all = append(all, healthy...)
	for _, c := range stormers {
		if c != nil {
			all = append(all, c)
		}
	}
	for _, nd := range cl.nodes {
		m := neffos.Message{Namespace: ns, Event: evMsg, Body: []byte(fmt.Sprintf("after%d", nd.idx))}
		guard(t, fmt.Sprintf("Broadcast from node %d", nd.idx), func() { nd.srv.Broadcast(nil, m) })
	}
	guard(t, "barrier", func() { cl.barrier(ns, all...) })
	for _, c := range all {
		for i := range cl.nodes {
			expectCount(t, rule+": every healthy client gets a broadcast sent after the storm exactly once", c, 1, evMsg, fmt.Sprintf("after%d", i))
		}
	}
	for _, c := range healthy {
		var bad []string
		for n := range cl.nodes {
			for i := 0; i < broadcasts; i++ {
				body := fmt.Sprintf("h%d:%d", n, i)
				if k := c.count(withBody(evMsg, body)); k != 1 {
					bad = append(bad, fmt.Sprintf("%s x%d", body, k))
				}
			}
		}
		if len(bad) > 0 {
			t.Errorf("%s: healthy client %s on node %d: %d of %d broadcasts sent during the storm not received exactly once: %v",
				rule, c.name, c.node, len(bad), Nodes*broadcasts, first(bad))
		}
	}
	t.Logf("ErrorHandler calls: %d (%d ErrSlowConsumer); log records: %d", handled.Load(), slowReports.Load(), logged.Load())
	if _, ours := cl.nodes[0].exc.(scaleout.StackExchange); ours && slowReports.Load() == 0 {
		t.Errorf("%s: the ErrorHandler was never called with scaleout.ErrSlowConsumer, with %d stalled clients sent %d messages each over a queue of %d", rule, len(slow), flood, queue)
	}
}

// sleepyWriter is a slow log destination: each write takes d.
type sleepyWriter struct {
	d time.Duration
	n *atomic.Int64
}

func (w sleepyWriter) Write(p []byte) (int, error) {
	time.Sleep(w.d)
	w.n.Add(1)
	return len(p), nil
}

// spreadGuarded dials perNode clients named "<name><node>.<n>" to every
// node on namespace, each neffos call under guard, and fails rule when one
// cannot connect.
func spreadGuarded(t *testing.T, cl *cluster, rule, name string, perNode int, namespace string) []*client {
	t.Helper()
	var cs []*client
	for i := range cl.nodes {
		for j := 0; j < perNode; j++ {
			c, err := cl.dialWith(fmt.Sprintf("%s%d.%d", name, i, j), i, dialOpts{guard: t}, namespace)
			if err != nil {
				t.Fatalf("%s: dial %s: %v", rule, name, err)
			}
			cs = append(cs, c)
		}
	}
	return cs
}

// failures counts the errors of calls made on several goroutines and
// keeps the first.
type failures struct {
	mu    sync.Mutex
	n     int
	first error
}

// add counts err when it is not nil and reports whether it was.
func (f *failures) add(err error) bool {
	if err == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.first == nil {
		f.first = err
	}
	return true
}

func (f *failures) get() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, f.first
}

// runParallel calls fn(0), fn(1), ... on workers goroutines, as long as
// more(i) holds for the next i, and returns how many it called once they
// all returned.
func runParallel(workers int, more func(i int) bool, fn func(i int)) int {
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	n := 0
	for ; more(n); n++ {
		next <- n
	}
	close(next)
	wg.Wait()
	return n
}
