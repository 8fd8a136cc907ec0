package redis_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// Failover tests: three nodes A, B, C on a distributed Redis
// topology, one client each, every node broadcasting every 20 ms; one
// broker process is SIGKILLed mid-traffic. Each test reports the gap and
// the messages lost per (publisher, receiver) pair, and fails on a
// duplicate, on a Publish or Broadcast that blocked past PublishTimeout
// (+ timingSlack), or when cross-node delivery does not resume by itself.
// Loss during the failover is expected (Redis pub/sub keeps nothing for a
// disconnected subscriber) and only reported.

// traffic is the broadcast load of a failover test.
type traffic struct {
	nodes   []*hnode
	clients []*hclient // clients[i] is on nodes[i]

	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	// longest neffos Broadcast per node
	longest map[string]time.Duration
}

// startTraffic starts one broadcaster per node ("<node>-<n>" every 20 ms)
// and waits until traffic crossed between every pair of nodes.
func startTraffic(t *testing.T, nodes []*hnode, clients []*hclient) *traffic {
	t.Helper()
	tr := &traffic{nodes: nodes, clients: clients, stop: make(chan struct{}), longest: map[string]time.Duration{}}
	for _, n := range nodes {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			tick := time.NewTicker(20 * time.Millisecond) // pacing
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-tr.stop:
					return
				case <-tick.C:
				}
				d := n.broadcast(fmt.Sprintf("%s-%d", n.name, i))
				tr.mu.Lock()
				tr.longest[n.name] = max(tr.longest[n.name], d)
				tr.mu.Unlock()
			}
		}()
	}
	t.Cleanup(tr.halt)
	if !waitUntil(20*time.Second, func() bool { return tr.crossedSince(time.Time{}) }) {
		t.Fatal("traffic did not cross between every pair of nodes before the fault")
	}
	return tr
}

var haltMu sync.Mutex

func (tr *traffic) halt() {
	haltMu.Lock()
	defer haltMu.Unlock()
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	tr.wg.Wait()
}

// crossedSince reports whether, for every pair of distinct nodes, a
// message the publisher sent after since reached the receiver's client.
func (tr *traffic) crossedSince(since time.Time) bool {
	for i, p := range tr.nodes {
		for j, r := range tr.clients {
			if i == j {
				continue
			}
			ok := false
			for _, c := range p.exc.publishCalls() {
				if c.start.After(since) && strings.HasPrefix(c.body, p.name+"-") && r.count(c.body) > 0 {
					ok = true
					break
				}
			}
			if !ok {
				return false
			}
		}
	}
	return true
}

// pairReport is what one (publisher, receiver) pair saw.
type pairReport struct {
	from, to     string
	sent, lost   int
	dup          int
	gap          time.Duration // longest time between the publishes of two consecutive received messages
	gapStart     time.Duration // when that gap began, relative to the fault
	resumedAfter time.Duration // first received publish after the gap, relative to the fault
}

// report stops the traffic, waits until everything published arrived
// (barrier), checks the rules and logs the numbers. It returns the pair
// reports.
func (tr *traffic) report(t *testing.T, fault time.Time) []pairReport {
	t.Helper()
	tr.halt()
	barrier(t, "end", tr.nodes, tr.clients...)
	var out []pairReport
	for i, p := range tr.nodes {
		calls := p.exc.publishCalls()
		sort.Slice(calls, func(a, b int) bool { return calls[a].start.Before(calls[b].start) })
		var maxPub time.Duration
		failed := 0
		for _, c := range calls {
			maxPub = max(maxPub, c.dur)
			if !c.ok {
				failed++
			}
			if c.dur > scaleout.DefaultPublishTimeout+timingSlack {
				t.Errorf("node %s: Publish of %q blocked %v, past PublishTimeout %v", p.name, c.body, c.dur, scaleout.DefaultPublishTimeout)
			}
		}
		tr.mu.Lock()
		longest := tr.longest[p.name]
		tr.mu.Unlock()
		if longest > scaleout.DefaultPublishTimeout+timingSlack {
			t.Errorf("node %s: a neffos Broadcast blocked %v, past PublishTimeout %v", p.name, longest, scaleout.DefaultPublishTimeout)
		}
		st := p.exc.Stats()
		t.Logf("node %s: %d Publish calls, %d returned false, longest Publish %v, longest Broadcast %v; stats: missed %d, duplicates dropped %d, publish errors %d, errors reported %d",
			p.name, len(calls), failed, maxPub.Round(time.Millisecond), longest.Round(time.Millisecond), st.Missed, st.Duplicates, st.PublishErrors, p.reports.Load())
		for j, r := range tr.clients {
			pr := pairReport{from: p.name, to: r.name}
			var prev time.Time
			for _, c := range calls {
				if !strings.HasPrefix(c.body, p.name+"-") {
					continue
				}
				pr.sent++
				switch n := r.count(c.body); {
				case n == 0:
					pr.lost++
					continue
				case n > 1:
					pr.dup++
				}
				if !prev.IsZero() && c.start.Sub(prev) > pr.gap {
					pr.gap = c.start.Sub(prev)
					pr.gapStart = prev.Sub(fault)
					pr.resumedAfter = c.start.Sub(fault)
				}
				prev = c.start
			}
			if pr.dup > 0 {
				t.Errorf("client %s got %d of node %s's broadcasts more than once", r.name, pr.dup, p.name)
			}
			if i == j {
				if pr.lost > 0 {
					t.Errorf("local client %s lost %d of its own node %s's broadcasts", r.name, pr.lost, p.name)
				}
				continue
			}
			out = append(out, pr)
			t.Logf("%s -> %s: %d sent, %d lost, longest gap %v (from %+v to %+v after the fault)",
				pr.from, pr.to, pr.sent, pr.lost, pr.gap.Round(time.Millisecond), pr.gapStart.Round(time.Millisecond), pr.resumedAfter.Round(time.Millisecond))
		}
	}
	return out
}

// threeNodes starts nodes A, B and C on the exchanges build returns, a
// client on each, and checks that broadcasts cross before the fault.
func threeNodes(t *testing.T, build func(onErr func(error)) (engineExchange, error)) ([]*hnode, []*hclient) {
	t.Helper()
	var nodes []*hnode
	var clients []*hclient
	for _, name := range []string{"A", "B", "C"} {
		n := startNodeWith(t, name, build)
		nodes = append(nodes, n)
		clients = append(clients, dialClient(t, strings.ToLower(name)+"1", n))
	}
	for _, n := range nodes {
		deliverAll(t, n, "healthy-"+n.name, 10*time.Second, clients...)
	}
	return nodes, clients
}

// awaitResumption waits at most 30 s until every pair crossed again after
// the fault, fails the test otherwise, and returns how long it took.
func awaitResumption(t *testing.T, tr *traffic, fault time.Time) time.Duration {
	t.Helper()
	if !waitUntil(30*time.Second, func() bool { return tr.crossedSince(fault) }) {
		t.Fatalf("cross-node delivery did not resume within 30 s of the fault")
	}
	return time.Since(fault)
}

// checkDirect sends a message To each client from the next node and fails
// unless each arrives within d.
func checkDirect(t *testing.T, nodes []*hnode, clients []*hclient, tag string, d time.Duration) {
	t.Helper()
	for i, c := range clients {
		from := nodes[(i+1)%len(nodes)]
		body := fmt.Sprintf("to-%s-%s", c.name, tag)
		from.broadcastTo(c.id, body)
		if !c.waitBody(d, body) {
			t.Errorf("a message To %s from node %s never arrived (%s)", c.name, from.name, tag)
		}
	}
}

// TestFailoverClusterMaster: SIGKILL of a Redis Cluster master that holds
// nodes' pub/sub connections (and serves their publishes); its replica is
// promoted after cluster-node-timeout.
func TestFailoverClusterMaster(t *testing.T) {
	watchdog(t, 3*time.Minute)
	c := ownCluster(t)
	cfg := clusterConfig(c)
	channel := testChannel(t)
	nodes, clients := threeNodes(t, func(onErr func(error)) (engineExchange, error) {
		cfg := cfg
		return redis.NewStackExchangeOptions(cfg, channel, scaleout.Options{ErrorHandler: onErr})
	})
	victim, held := busiestMaster(t, c)
	nsMaster, err := c.Master(nodes[0].eng.ChannelOf(hns))
	if err != nil {
		t.Fatal(err)
	}
	tr := startTraffic(t, nodes, clients)
	fault := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed master %s, holding %d of 3 nodes' pub/sub connections; namespace channel's slot master: %v",
		victim.Addr, held, nsMaster == victim)
	resumed := awaitResumption(t, tr, fault)
	t.Logf("cross-node delivery resumed between every pair %v after the kill", resumed.Round(time.Millisecond))
	if err := c.Ready(30 * time.Second); err != nil {
		t.Errorf("the cluster did not fail over: %v", err)
	}
	t.Logf("replica promoted, cluster_state:ok %v after the kill", time.Since(fault).Round(time.Millisecond))
	<-time.After(time.Second) // a second of healthy traffic after the failover, part of the scenario
	tr.report(t, fault)
	checkDirect(t, nodes, clients, "after", 10*time.Second)
}

// busiestMaster returns the running master on which the most connections
// named by an exchange are pub/sub connections, and how many.
func busiestMaster(t *testing.T, c *brokertest.RedisCluster) (*brokertest.Redis, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var best *brokertest.Redis
	bestN := -1
	for _, n := range c.Nodes {
		raw := rawClient(t, &goredis.Options{Addr: n.Addr})
		role, err := raw.Do(ctx, "ROLE").Slice()
		if err != nil || len(role) == 0 || role[0] != "master" {
			continue
		}
		list, err := raw.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		subs := 0
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, "name=scaleout-") && !strings.Contains(line, " sub=0 ") {
				subs++
			}
		}
		if subs > bestN {
			best, bestN = n, subs
		}
	}
	if best == nil {
		t.Fatal("no master found")
	}
	return best, bestN
}

// TestFailoverSentinelMaster: SIGKILL of the master the sentinels monitor;
// they promote the replica after down-after-milliseconds.
func TestFailoverSentinelMaster(t *testing.T) {
	watchdog(t, 3*time.Minute)
	s := ownSentinel(t)
	cfg := sentinelConfig(s)
	channel := testChannel(t)
	nodes, clients := threeNodes(t, func(onErr func(error)) (engineExchange, error) {
		cfg := cfg
		return redis.NewStackExchangeOptions(cfg, channel, scaleout.Options{ErrorHandler: onErr})
	})
	master, err := s.Master()
	if err != nil {
		t.Fatal(err)
	}
	tr := startTraffic(t, nodes, clients)
	fault := time.Now()
	if err := master.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed the master %s", master.Addr)
	resumed := awaitResumption(t, tr, fault)
	t.Logf("cross-node delivery resumed between every pair %v after the kill", resumed.Round(time.Millisecond))
	if err := s.Ready(30 * time.Second); err != nil {
		t.Errorf("the sentinels did not fail over: %v", err)
	}
	t.Logf("replica promoted, sentinels agree %v after the kill", time.Since(fault).Round(time.Millisecond))
	<-time.After(time.Second) // a second of healthy traffic after the failover, part of the scenario
	tr.report(t, fault)
	checkDirect(t, nodes, clients, "after", 10*time.Second)
}

// TestFailoverShard: three redis-servers sharded by channel
// (scaleout.Sharded); SIGKILL of a shard that does not hold the namespace
// channel. Broadcasts (on the namespace channel) go on without loss; after
// the shard restarts, the nodes subscribe its channels again by themselves
// and messages To the clients whose channels live there arrive.
func TestFailoverShard(t *testing.T) {
	watchdog(t, 3*time.Minute)
	shards := ownShards(t)
	addrs := addrsOf(shards)
	channel := testChannel(t)
	nodes, clients := threeNodes(t, func(onErr func(error)) (engineExchange, error) {
		return newSharded(t, channel, scaleout.Options{ErrorHandler: onErr}, addrs...), nil
	})
	// Where each channel lives: the shard whose server counts subscribers.
	home := func(ch string) int {
		for i, r := range shards {
			if r.PID() == 0 {
				continue
			}
			raw := rawClient(t, &goredis.Options{Addr: r.Addr})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			m, err := raw.PubSubNumSub(ctx, ch).Result()
			cancel()
			if err == nil && m[ch] > 0 {
				return i
			}
		}
		return -1
	}
	nsShard := home(nodes[0].eng.ChannelOf(hns))
	if nsShard < 0 {
		t.Fatal("no shard holds the namespace channel")
	}
	victim := (nsShard + 1) % len(shards)
	var onVictim []string
	for _, c := range clients {
		if home(nodes[0].connChannel(c.id)) == victim {
			onVictim = append(onVictim, c.name)
		}
	}
	t.Logf("namespace channel on shard %d; killing shard %d, which holds the channels of clients %v", nsShard, victim, onVictim)

	tr := startTraffic(t, nodes, clients)
	fault := time.Now()
	if err := shards[victim].Kill(); err != nil {
		t.Fatal(err)
	}
	// Broadcasts keep crossing during the outage.
	if !waitUntil(10*time.Second, func() bool { return tr.crossedSince(fault.Add(500 * time.Millisecond)) }) {
		t.Errorf("broadcasts (namespace channel on a live shard) stopped crossing nodes while another shard was down")
	}
	<-time.After(2 * time.Second) // the rest of the outage: part of the scenario
	restart := time.Now()
	if err := shards[victim].Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("shard %d restarted %v after the kill", victim, restart.Sub(fault).Round(time.Millisecond))
	pairs := tr.report(t, fault)
	for _, p := range pairs {
		if p.lost > 0 {
			t.Errorf("%s -> %s lost %d broadcasts though the namespace channel's shard never went down", p.from, p.to, p.lost)
		}
	}
	// Direct messages to every client, those on the restarted shard
	// included, once the nodes resubscribed there by themselves.
	start := time.Now()
	raw := rawClient(t, &goredis.Options{Addr: shards[victim].Addr})
	want := map[string]int64{}
	for _, c := range clients {
		if slices.Contains(onVictim, c.name) {
			want[nodes[0].connChannel(c.id)] = 1
		}
	}
	if got, ok := waitSubscribed(raw, want, 20*time.Second); !ok {
		t.Fatalf("the nodes did not resubscribe on the restarted shard: %v, want %v", got, want)
	}
	checkDirect(t, nodes, clients, "after", 10*time.Second)
	t.Logf("after the restart, the shard's channels were subscribed again and To messages delivered within %v", time.Since(start).Round(time.Millisecond))
}
