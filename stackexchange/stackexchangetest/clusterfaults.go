package stackexchangetest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// callSlack is what a bounded call may take beyond its timeout on a loaded
// machine under -race: scheduling, not waiting.
const callSlack = 500 * time.Millisecond

// testClusterKillOne is RunClusterFaults' rule (see there): ps[0], the
// server node 0 is attached to, is killed under traffic from every node.
func testClusterKillOne(t *testing.T, ps []Process, f Factory) {
	const perNode = 4
	const evTraffic, evProbe = "traffic", "probe"
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, perNode, ns)
	if _, ok := hearEachOther(cl, cs, evProbe, 20*time.Second); !ok {
		t.Fatal("before the kill: the nodes do not reach each other's clients within 20 s")
	}
	tr := startTraffic(cl, evTraffic)
	defer tr.halt()
	crossNode := func(pub, rcv int) bool { return pub != rcv }
	flowing := newArrivals(time.Now(), evTraffic, make([]int64, len(cl.nodes)))
	if !waitUntil(20*time.Second, func() bool { _, ok := flowing.check(cs, crossNode); return ok }) {
		t.Fatal("before the kill: the traffic does not cross nodes within 20 s")
	}
	// The kill comes after a second of traffic, and the traffic goes on
	// for a second after delivery resumed.
	sentAll := func(n int64) func() bool {
		return func() bool {
			for i := range tr.sent {
				if tr.sent[i].Load() < n {
					return false
				}
			}
			return true
		}
	}
	if !waitUntil(20*time.Second, sentAll(50)) {
		t.Fatalf("before the kill: the nodes sent %v messages in 20 s, want 50 each", sentCounts(tr))
	}

	sentAtKill := make([]int64, len(cl.nodes))
	for i := range sentAtKill {
		sentAtKill[i] = tr.sent[i].Load()
	}
	killAll(t, ps[0])
	killed := time.Now()

	// A message numbered above what its node had sent at the kill was
	// broadcast after it: its arrival shows delivery has resumed.
	fromNode0 := func(pub, rcv int) bool { return pub == 0 && rcv != 0 }
	toNode0 := func(pub, rcv int) bool { return pub != 0 && rcv == 0 }
	out := newArrivals(killed, evTraffic, sentAtKill)
	in := newArrivals(killed, evTraffic, sentAtKill)
	var outAt, inAt time.Time
	resumed := waitUntil(30*time.Second, func() bool {
		var okOut, okIn bool
		outAt, okOut = out.check(cs, fromNode0)
		inAt, okIn = in.check(cs, toNode0)
		return okOut && okIn
	})
	if !resumed {
		_, okOut := out.check(cs, fromNode0)
		_, okIn := in.check(cs, toNode0)
		t.Fatalf("server of node 0 killed: cross-node delivery did not resume by itself within 30 s (node 0 -> other nodes' clients %v, other nodes -> node 0's clients %v)", okOut, okIn)
	}
	if resumedAt := slices.Max(sentCounts(tr)); !waitUntil(20*time.Second, sentAll(resumedAt+50)) {
		t.Fatalf("after delivery resumed: the nodes sent %v messages, want %d each within 20 s", sentCounts(tr), resumedAt+50)
	}
	tr.halt()
	cl.barrier(ns, cs...)

	sent := func(i int) int {
		if i >= len(tr.sent) {
			return -1
		}
		return int(tr.sent[i].Load())
	}
	lost, dups := tallyPairs(cs, evTraffic, sent)
	var lostPairs, dupPairs []string
	totalLost, totalDups, total := 0, 0, 0
	for i := range lost {
		total += sent(i) * len(cs)
		for r := range lost[i] {
			lostPairs = append(lostPairs, fmt.Sprintf("%d->%d: %d", i, r, lost[i][r]))
			if dups[i][r] > 0 {
				dupPairs = append(dupPairs, fmt.Sprintf("%d->%d: %d", i, r, dups[i][r]))
			}
			totalLost += lost[i][r]
			totalDups += dups[i][r]
		}
	}
	var slowest time.Duration
	var perNodeSlowest []string
	for i := range tr.slowest {
		d := time.Duration(tr.slowest[i].Load())
		slowest = max(slowest, d)
		perNodeSlowest = append(perNodeSlowest, fmt.Sprintf("%d: %v", i, d.Round(time.Millisecond)))
	}
	t.Logf("server of node 0 killed: node 0's broadcasts reached every other node's clients again after %v; the other nodes' reached node 0's clients after %v",
		outAt.Sub(killed).Round(time.Millisecond), inAt.Sub(killed).Round(time.Millisecond))
	t.Logf("sent per node %v; deliveries lost per publishing->receiving node (%d clients each), of %d: %s; total %d",
		sentCounts(tr), perNode, total, strings.Join(lostPairs, ", "), totalLost)
	t.Logf("duplicates: %d; slowest Server.Broadcast per node: %s", totalDups, strings.Join(perNodeSlowest, ", "))
	if totalDups > 0 {
		t.Errorf("server of node 0 killed: %d deliveries duplicated (%s); want none", totalDups, strings.Join(dupPairs, ", "))
	}
	if limit := scaleout.DefaultPublishTimeout + callSlack; slowest > limit {
		t.Errorf("server of node 0 killed: a Server.Broadcast was blocked %v, more than PublishTimeout %v + %v", slowest, scaleout.DefaultPublishTimeout, callSlack)
	}

	// The killed server comes back and rejoins: the first nodes still
	// reach each other, and so do new nodes whose node 0 is attached to
	// the restarted server.
	restartAll(t, ps[0])
	took, ok := hearEachOther(cl, cs, evProbe, 30*time.Second)
	if !ok {
		t.Fatal("server of node 0 restarted: the nodes do not reach each other's clients within 30 s")
	}
	cl2 := newCluster(t, f, Nodes, []string{ns}, false)
	cs2 := spread(cl2, 1, ns)
	took2, ok := hearEachOther(cl2, cs2, evProbe, 30*time.Second)
	if !ok {
		t.Fatal("server of node 0 restarted: new nodes, node 0 on the restarted server, do not reach each other's clients within 30 s")
	}
	t.Logf("server of node 0 restarted: the nodes reach each other's clients %v after Restart returned; new nodes (node 0 on the restarted server) within %v",
		took.Round(time.Millisecond), took2.Round(time.Millisecond))
}

func sentCounts(tr *traffic) []int64 {
	out := make([]int64, len(tr.sent))
	for i := range tr.sent {
		out[i] = tr.sent[i].Load()
	}
	return out
}

// arrivals tracks, per (publishing node, client), the first message of
// event "<node>:<n>" the client got after since with n > after[node].
type arrivals struct {
	since time.Time
	event string
	after []int64
	first map[[2]int]time.Time // (publisher, index in cs) -> arrival
}

func newArrivals(since time.Time, event string, after []int64) *arrivals {
	return &arrivals{since: since, event: event, after: after, first: map[[2]int]time.Time{}}
}

// check reports whether every client c in cs got such a message from every
// node pub with want(pub, c.node), and when the last of those arrived. cs
// must be the same slice at every call.
func (a *arrivals) check(cs []*client, want func(pub, rcv int) bool) (last time.Time, ok bool) {
	ok = true
	for ci, c := range cs {
		for pub := range a.after {
			if !want(pub, c.node) {
				continue
			}
			key := [2]int{pub, ci}
			at, seen := a.first[key]
			if !seen {
				if at, seen = c.firstSince(a.since, fromNode(a.event, pub, a.after[pub])); !seen {
					ok = false
					continue
				}
				a.first[key] = at
			}
			if at.After(last) {
				last = at
			}
		}
	}
	return last, ok
}

// hearEachOther broadcasts a probe "<node>:<round>" of event from every
// node, again every 100 ms, until every client in cs got a probe from
// every node (its own included), at most d. It returns how long that took.
func hearEachOther(cl *cluster, cs []*client, event string, d time.Duration) (time.Duration, bool) {
	start := time.Now()
	a := newArrivals(start, event, make([]int64, len(cl.nodes)))
	for i := range a.after {
		a.after[i] = -1
	}
	every := func(pub, rcv int) bool { return true }
	for round := 0; time.Since(start) < d; round++ {
		for _, nd := range cl.nodes {
			nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: event, Body: fmt.Appendf(nil, "%d:%d", nd.idx, round)})
		}
		if waitUntil(100*time.Millisecond, func() bool { _, ok := a.check(cs, every); return ok }) {
			return time.Since(start), true
		}
	}
	return time.Since(start), false
}
