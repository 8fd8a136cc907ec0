package stackexchangetest

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kataras/neffos"
)

// Process is a broker server process that a fault rule may kill and start
// again. Implementations start their own process on a free loopback port
// and never touch a broker they did not start.
type Process interface {
	// Kill stops the process at once (SIGKILL).
	Kill() error
	// Restart starts it again on the same address.
	Restart() error
}

// FaultFactory starts a broker process of the test's own and returns it
// with a Factory of exchanges connected to it.
type FaultFactory func(t *testing.T) (Process, Factory)

// RunFaults checks the rules that take a broker down, against the
// exchanges f builds on a broker process of their own. Each rule is a named
// subtest with a watchdog, like Run's.
func RunFaults(t *testing.T, f FaultFactory) {
	rules := []struct {
		name string
		fn   func(*testing.T, Process, Factory)
	}{
		{"Fault/KillRestart/NothingLostAfterReturn", testKillRestart},
	}
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			watchdog(t, 2*time.Minute)
			p, factory := f(t)
			r.fn(t, p, factory)
		})
	}
}

const (
	evBackground = "bg"    // node 0's steady traffic
	evBatch      = "batch" // "<node>:<n>" after the broker's return
)

// testKillRestart: 3 nodes with 10 clients each, node 0 broadcasting
// 50 msg/s; the broker is killed and restarted on the same port 3 s later;
// nodes 1 and 2 publish nothing meanwhile. Once node 0's traffic crosses
// nodes again, every node broadcasts a batch of 20: every client gets each
// node's batch exactly once and in that node's order (a publish that meets
// a connection the broker's death left behind must not lose the message).
func testKillRestart(t *testing.T, p Process, f Factory) {
	const perNode, batch = 10, 20
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, perNode, ns)

	var bgSeq atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // bounded by stop, and by 2,000 messages (40 s)
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			n := bgSeq.Add(1)
			cl.nodes[0].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evBackground, Body: []byte(strconv.FormatInt(n, 10))})
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	// Cross-node traffic flows before the outage.
	crossed := func(after int64) bool {
		for _, c := range cs {
			if c.node == 0 {
				continue
			}
			if c.count(func(r received) bool { return r.event == evBackground && bodyInt(r.body) > after }) == 0 {
				return false
			}
		}
		return true
	}
	if !waitUntil(20*time.Second, func() bool { return crossed(0) }) {
		t.Fatal("node 0's broadcasts never reached the other nodes before the outage")
	}
	if err := p.Kill(); err != nil {
		t.Fatalf("kill the broker: %v", err)
	}
	killed := time.Now()
	time.Sleep(3 * time.Second) // the outage's length, not synchronisation
	if err := p.Restart(); err != nil {
		t.Fatalf("restart the broker: %v", err)
	}
	back := time.Now()
	atReturn := bgSeq.Load()
	if !waitUntil(30*time.Second, func() bool { return crossed(atReturn) }) {
		t.Fatalf("node 0's broadcasts did not reach the other nodes within 30 s of the broker's return")
	}
	resumed := time.Since(back)

	for i, nd := range cl.nodes {
		for n := 0; n < batch; n++ {
			nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evBatch, Body: fmt.Appendf(nil, "%d:%d", i, n)})
		}
	}
	for _, c := range cs {
		if !c.waitFor(15*time.Second, batch*Nodes, func(r received) bool { return r.event == evBatch }) {
			break
		}
	}
	lost, dups, disorder := 0, 0, 0
	for _, c := range cs {
		got := map[int][]int{}
		for _, r := range c.messages() {
			if r.event != evBatch {
				continue
			}
			from, n, ok := strings.Cut(string(r.body), ":")
			if !ok {
				t.Fatalf("batch body %q", r.body)
			}
			i, _ := strconv.Atoi(from)
			k, _ := strconv.Atoi(n)
			got[i] = append(got[i], k)
		}
		for i := range cl.nodes {
			seen := map[int]bool{}
			last := -1
			for _, k := range got[i] {
				if seen[k] {
					dups++
				}
				if k < last {
					disorder++
				}
				seen[k], last = true, k
			}
			lost += batch - len(seen)
		}
	}
	t.Logf("outage %v; node 0's traffic crossed nodes again %v after the broker's return; batch deliveries: %d expected, %d lost, %d duplicates, %d out of order",
		back.Sub(killed).Round(time.Millisecond), resumed.Round(time.Millisecond), batch*Nodes*len(cs), lost, dups, disorder)
	if lost > 0 || dups > 0 || disorder > 0 {
		t.Errorf("after the broker's return: %d of %d batch deliveries lost, %d duplicated, %d out of order; want every message exactly once, in each node's order",
			lost, batch*Nodes*len(cs), dups, disorder)
	}
}

func bodyInt(b []byte) int64 {
	n, _ := strconv.ParseInt(string(b), 10, 64)
	return n
}
