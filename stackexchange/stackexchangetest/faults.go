package stackexchangetest

import (
	"context"
	"errors"
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
	// Pause stops the process without closing its sockets (SIGSTOP):
	// connections stay open and nobody answers.
	Pause() error
	// Resume continues a paused process (SIGCONT).
	Resume() error
}

// FaultFactory starts the broker processes of a test's own and returns
// them with a Factory of exchanges connected to them: one process for an
// exchange on one broker, several for an exchange over several brokers
// (scaleout.Redundant), each of which alone must carry the traffic.
type FaultFactory func(t *testing.T) ([]Process, Factory)

// RunFaults checks the rules that take a broker down, against the
// exchanges f builds on broker processes of their own. Each rule is a named
// subtest with a watchdog, like Run's.
//
// Rules Fault/Kill, Fault/Pause and Fault/PauseUnderLoad take the first
// process away (SIGKILL then a restart 3 s later; SIGSTOP then SIGCONT 5 s
// later, with 1-byte and with 16 KB messages) while two nodes publish, and
// check what testOutage lists: Publish bounded and false during the
// outage, local clients (old and new) served, recovery by itself, no
// duplicate, no goroutine left behind. Rule Fault/Kill/CloseReturns kills
// the broker under a started exchange: Close must return within 10 s and
// leave no goroutine.
func RunFaults(t *testing.T, f FaultFactory) {
	runFaults(t, f, 1, append([]faultRule{
		{"Fault/KillRestart/NothingLostAfterReturn", testKillRestart},
		{"Fault/Kill/ServedLocallyRecovers", outageRule(outageKill)},
		{"Fault/Pause/ServedLocallyRecovers", outageRule(outagePause)},
		{"Fault/PauseUnderLoad/ServedLocallyRecovers", outageRule(outagePauseLoad)},
		{"Fault/Kill/CloseReturns", testCloseBrokerDown},
	}, repairRules...))
}

func outageRule(o outage) func(*testing.T, []Process, Factory) {
	return func(t *testing.T, ps []Process, f Factory) { testOutage(t, ps, f, o) }
}

// RunRedundancyFaults checks the rules of an exchange over several brokers
// (scaleout.Redundant): f must return at least two processes, and any one
// of them alone must carry the traffic.
func RunRedundancyFaults(t *testing.T, f FaultFactory) {
	runFaults(t, f, 2, []faultRule{
		{"Fault/Redundant/KillEither", testRedundantKill},
	})
}

// RunClusterFaults checks the rules of an exchange on a cluster of broker
// servers that fails over by itself (a NATS cluster; Redis Cluster or
// Sentinel): f must return at least two processes, all members of one
// cluster, the first of them the server node 0's exchange is attached to.
//
// The rules build their nodes with f's Factory, which is called once per
// node in node order (0, 1, 2) for each group of nodes a rule starts, each
// group with a channel of its own. A factory can therefore attach node i
// to processes[i % len(processes)] (count its calls per channel), so that
// cross-node traffic crosses the cluster; only the first is required.
//
// Rule Fault/Cluster/KillOneServer: 3 nodes with 4 clients each, every
// node broadcasting 50 msg/s. processes[0] is killed (SIGKILL). The rule
// reports how long until node 0's broadcasts reach the other nodes'
// clients again and theirs reach node 0's clients, and the deliveries lost
// per (publishing node, receiving node) pair during the outage: a cluster
// without persistence may lose messages while a connection fails over,
// and the rule does not fail on loss. It fails when a client gets a
// message twice, when a Server.Broadcast is blocked for more than the
// engine's DefaultPublishTimeout plus 0.5 s (the factory gets the zero
// Options), or when cross-node delivery in both directions does not resume
// by itself within 30 s. Then processes[0] is restarted: it must rejoin,
// so that the first nodes still reach each other, and a new group of
// nodes, whose node 0 is attached to the restarted server, does too.
func RunClusterFaults(t *testing.T, f FaultFactory) {
	runFaults(t, f, 2, []faultRule{
		{"Fault/Cluster/KillOneServer", testClusterKillOne},
	})
}

type faultRule struct {
	name string
	fn   func(*testing.T, []Process, Factory)
}

func runFaults(t *testing.T, f FaultFactory, minProcs int, rules []faultRule) {
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			watchdog(t, 3*time.Minute)
			procs, factory := f(t)
			if len(procs) < minProcs {
				t.Fatalf("the FaultFactory returned %d broker processes; this rule needs %d", len(procs), minProcs)
			}
			r.fn(t, procs, factory)
		})
	}
}

// killAll kills every process in ps.
func killAll(t *testing.T, ps ...Process) {
	t.Helper()
	for _, p := range ps {
		if err := p.Kill(); err != nil {
			t.Fatalf("kill a broker: %v", err)
		}
	}
}

// restartAll restarts every process in ps.
func restartAll(t *testing.T, ps ...Process) {
	t.Helper()
	for _, p := range ps {
		if err := p.Restart(); err != nil {
			t.Fatalf("restart a broker: %v", err)
		}
	}
}

const (
	evBackground = "bg"    // node 0's steady traffic
	evBatch      = "batch" // "<node>:<n>" after the broker's return
)

// testKillRestart: 3 nodes with 10 clients each, node 0 broadcasting
// 50 msg/s; the brokers are killed and restarted on the same ports 3 s
// later;
// nodes 1 and 2 publish nothing meanwhile. Once node 0's traffic crosses
// nodes again, every node broadcasts a batch of 20: every client gets each
// node's batch exactly once and in that node's order (a publish that meets
// a connection the broker's death left behind must not lose the message).
func testKillRestart(t *testing.T, ps []Process, f Factory) {
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
	killAll(t, ps...)
	killed := time.Now()
	time.Sleep(3 * time.Second) // the outage's length, not synchronisation
	restartAll(t, ps...)
	back := time.Now()
	atReturn := bgSeq.Load()
	if !waitUntil(30*time.Second, func() bool { return crossed(atReturn) && resubscribed(t, cl) }) {
		t.Fatalf("node 0's broadcasts did not reach the other nodes, or the nodes did not subscribe again, within 30 s of the broker's return")
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

// resubscribed reports whether every node subscribes the namespace's
// channel on the broker again, as far as the exchanges can tell
// (BrokerConns and NamespaceSubscribers); without them it reports true.
func resubscribed(t *testing.T, cl *cluster) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	in, ok := cl.nodes[0].exc.(inspector)
	if !ok {
		return true
	}
	n, err := in.NamespaceSubscribers(ctx, ns)
	if errors.Is(err, errors.ErrUnsupported) {
		return true
	}
	return err == nil && n >= len(cl.nodes)
}

func bodyInt(b []byte) int64 {
	n, _ := strconv.ParseInt(string(b), 10, 64)
	return n
}

// traffic broadcasts "<node>:<n>" from every node at 50 msg/s until stopped
// (at most 3,000 messages per node).
// It records each node's slowest Server.Broadcast.
type traffic struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	sent    []atomic.Int64
	slowest []atomic.Int64 // nanoseconds
}

func startTraffic(cl *cluster, event string) *traffic {
	tr := newTraffic(len(cl.nodes))
	for i, nd := range cl.nodes {
		tr.every(3000, func(k int) {
			start := time.Now()
			nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: event, Body: fmt.Appendf(nil, "%d:%d", i, k)})
			if d := int64(time.Since(start)); d > tr.slowest[i].Load() {
				tr.slowest[i].Store(d) // this goroutine is the only writer
			}
			tr.sent[i].Add(1)
		})
	}
	return tr
}

func newTraffic(nodes int) *traffic {
	return &traffic{stop: make(chan struct{}), sent: make([]atomic.Int64, nodes), slowest: make([]atomic.Int64, nodes)}
}

// every runs fn(0), fn(1), ... on a goroutine of its own, one call every
// 20 ms, at most n calls, until halt.
func (tr *traffic) every(n int, fn func(k int)) {
	tr.wg.Add(1)
	go func() {
		defer tr.wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for k := 0; k < n; k++ {
			select {
			case <-tr.stop:
				return
			case <-tick.C:
			}
			fn(k)
		}
	}()
}

func (tr *traffic) halt() {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	tr.wg.Wait()
}

// tally counts, over clients, the deliveries of event bodies "<node>:<n>"
// that are missing or repeated against what each node sent.
func tally(t *testing.T, clients []*client, event string, sent func(node int) int) (lost, dups int) {
	t.Helper()
	lostBy, dupsBy := tallyPairs(clients, event, sent)
	for i := range lostBy {
		for r := range lostBy[i] {
			lost += lostBy[i][r]
			dups += dupsBy[i][r]
		}
	}
	return lost, dups
}

// tallyPairs is tally per pair: lost[i][r] and dups[i][r] count the
// deliveries of node i's messages to the clients of node r. sent(i) is
// what node i sent, and -1 past the last node.
func tallyPairs(clients []*client, event string, sent func(node int) int) (lost, dups [][]int) {
	receivers := 0
	for _, c := range clients {
		receivers = max(receivers, c.node+1)
	}
	for i := 0; sent(i) >= 0; i++ {
		lost = append(lost, make([]int, receivers))
		dups = append(dups, make([]int, receivers))
	}
	for _, c := range clients {
		seen := map[string]int{}
		for _, r := range c.messages() {
			if r.event == event {
				seen[string(r.body)]++
			}
		}
		for i := range lost {
			for k := 0; k < sent(i); k++ {
				switch n := seen[fmt.Sprintf("%d:%d", i, k)]; {
				case n == 0:
					lost[i][c.node]++
				case n > 1:
					dups[i][c.node] += n - 1
				}
			}
		}
	}
	return lost, dups
}

// fromNode matches event bodies "<node>:<n>" with n > after.
func fromNode(event string, node int, after int64) func(received) bool {
	prefix := strconv.Itoa(node) + ":"
	return func(r received) bool {
		rest, ok := strings.CutPrefix(string(r.body), prefix)
		if !ok || r.event != event {
			return false
		}
		n, err := strconv.ParseInt(rest, 10, 64)
		return err == nil && n > after
	}
}

// testRedundantKill: 3 nodes with 4 clients each, every node broadcasting
// 50 msg/s, on an exchange over several brokers. Each broker in turn is
// killed for 3 s and restarted: no cross-node message is lost or
// duplicated, and a Server.Ask across nodes is answered during each
// outage. Then every broker is down at once: each node's own clients are
// still served; when they are back, cross-node delivery resumes by itself.
func testRedundantKill(t *testing.T, ps []Process, f Factory) {
	const evTraffic, evLocal, evProbe = "traffic", "local", "probe"
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	if stats(cl) == nil {
		t.Fatal("the exchange has no Stats() scaleout.Stats: this rule reads Duplicates to tell when a restarted broker carries traffic again")
	}
	cs := spread(cl, 4, ns)
	target := cs[len(cs)-1] // on the last node
	tr := startTraffic(cl, evTraffic)
	defer tr.halt()

	// bothCarry waits until every node reads each message twice again
	// (its duplicates grow): the restarted broker delivers once more.
	bothCarry := func(what string) {
		t.Helper()
		base := stats(cl)
		if !waitUntil(30*time.Second, func() bool {
			for i, s := range stats(cl) {
				if s.Duplicates < base[i].Duplicates+20 {
					return false
				}
			}
			return true
		}) {
			t.Fatalf("%s: the nodes do not read from both brokers again within 30 s", what)
		}
	}
	bothCarry("before the outages")
	before := stats(cl)
	for i, p := range ps {
		killAll(t, p)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		reply, err := cl.nodes[0].srv.Ask(ctx, neffos.Message{Namespace: ns, Event: evQuestion, To: target.id, Body: []byte("during")})
		cancel()
		if err != nil || string(reply.Body) != "answer:"+target.name+":during" {
			t.Errorf("broker %d down: Ask across nodes = %q, %v", i, reply.Body, err)
		}
		time.Sleep(3*time.Second - time.Since(start)) // the outage's length
		restartAll(t, p)
		bothCarry(fmt.Sprintf("broker %d restarted", i))
	}
	tr.halt()
	cl.barrier(ns, cs...)
	lost, dups := tally(t, cs, evTraffic, func(i int) int {
		if i >= len(tr.sent) {
			return -1
		}
		return int(tr.sent[i].Load())
	})
	total := 0
	for i := range tr.sent {
		total += int(tr.sent[i].Load()) * len(cs)
	}
	var repaired uint64
	for i, s := range stats(cl) {
		repaired += s.Repaired - before[i].Repaired
	}
	// The other broker carries every message: the repair path (a node
	// asking the origin for what it missed) should have nothing to do.
	t.Logf("%d deliveries expected across %d single-broker outages: %d lost, %d duplicated; %d messages brought by repair", total, len(ps), lost, dups, repaired)
	if lost > 0 || dups > 0 {
		t.Errorf("with one broker down at a time: %d of %d deliveries lost, %d duplicated; want none", lost, total, dups)
	}

	// Every broker down: a node still serves its own clients.
	killAll(t, ps...)
	for k := 0; k < 10; k++ {
		cl.nodes[1].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evLocal, Body: fmt.Appendf(nil, "1:%d", k)})
	}
	for _, c := range cs {
		if c.node == 1 && !c.waitFor(10*time.Second, 10, func(r received) bool { return r.event == evLocal }) {
			t.Errorf("every broker down: client %s on the publishing node got %d of 10 local messages", c.name, c.count(func(r received) bool { return r.event == evLocal }))
		}
	}
	restartAll(t, ps...)
	back := time.Now()
	far := cs[0] // on node 0; probes from the last node
	resumed := waitUntil(30*time.Second, func() bool {
		cl.nodes[len(cl.nodes)-1].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evProbe, Body: []byte("p")})
		return far.waitFor(100*time.Millisecond, 1, func(r received) bool { return r.event == evProbe })
	})
	if !resumed {
		t.Fatal("every broker back: cross-node delivery did not resume within 30 s")
	}
	t.Logf("every broker back: cross-node delivery resumed %v after the restart", time.Since(back).Round(time.Millisecond))
}

// testRestartedNode: a node's process restarts (new exchange) and its
// clients come back with the same connection ids: the new node's
// broadcasts and the messages To those ids are delivered, not taken for
// duplicates of the old node's.
func testRestartedNode(t *testing.T, f Factory) {
	const batch = 20
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	watchers := []*client{cl.dial("w0", 0, ns), cl.dial("w1", 1, ns)}
	dialKeep := func(name string) *client {
		c, err := cl.dialWith(name, 2, dialOpts{id: "keep-1"}, ns)
		if err != nil {
			t.Fatalf("dial %s with id keep-1: %v", name, err)
		}
		return c
	}
	keep := dialKeep("keep-before")
	send := func(tag string) {
		for k := 0; k < batch; k++ {
			cl.nodes[2].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, Body: fmt.Appendf(nil, "%s-%d", tag, k)})
			cl.nodes[0].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, To: "keep-1", Body: fmt.Appendf(nil, "%s-to-%d", tag, k)})
		}
	}
	check := func(tag string, keep *client) {
		t.Helper()
		cl.barrier(ns, append(watchers, keep)...)
		// To messages travel on the client's own channel, which a sharded
		// broker may keep on another server than the fences: wait for them.
		keep.waitFor(15*time.Second, batch, func(r received) bool { return strings.HasPrefix(string(r.body), tag+"-to-") })
		for k := 0; k < batch; k++ {
			for _, w := range watchers {
				expectCount(t, "a restarted node's broadcasts reach every client once", w, 1, evMsg, fmt.Sprintf("%s-%d", tag, k))
			}
			expectCount(t, "messages To a reconnected id reach it once", keep, 1, evMsg, fmt.Sprintf("%s-to-%d", tag, k))
		}
	}
	send("before")
	check("before", keep)
	cl.restart(2)
	keep = dialKeep("keep-after")
	send("after")
	check("after", keep)
}
