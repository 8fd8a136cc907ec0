package stackexchangetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// The cluster rules: scaleout.Cluster's operations (live nodes, connections
// on every node, remote control, node-to-node messages) on Nodes nodes with
// real clients. The exchanges must have a Cluster() *scaleout.Cluster
// method, as this module's do.

type clusterer interface{ Cluster() *scaleout.Cluster }

func clusterOf(t *testing.T, nd *node) *scaleout.Cluster {
	t.Helper()
	c, ok := nd.exc.(clusterer)
	if !ok {
		t.Fatal("the exchange has no Cluster() *scaleout.Cluster: the cluster rules need it")
	}
	return c.Cluster()
}

// waitNodes waits until every node lists want live nodes.
func waitNodes(t *testing.T, cl *cluster, want int, cond func(ns []scaleout.Node) bool) {
	t.Helper()
	if !waitUntil(3*scaleout.NodeExpiry, func() bool {
		for _, nd := range cl.nodes {
			ns := clusterOf(t, nd).Nodes()
			if len(ns) != want || (cond != nil && !cond(ns)) {
				return false
			}
		}
		return true
	}) {
		for _, nd := range cl.nodes {
			t.Logf("node %d lists %+v", nd.idx, clusterOf(t, nd).Nodes())
		}
		t.Fatalf("the nodes do not list %d live nodes", want)
	}
}

// testClusterNodes: every node lists the 3 nodes (itself first) with their
// namespaces and connection counts; a node that stops leaves the others'
// lists within NodeExpiry plus a heartbeat, and OnNodeLeave names it.
func testClusterNodes(t *testing.T, f Factory) {
	var mu sync.Mutex
	left := map[int][]string{} // observer node -> ids it saw leave
	joined := map[int]int{}
	cl := newClusterOpts(t, f, Nodes, []string{ns}, false, func(nd *node) scaleout.Options {
		i := nd.idx
		return scaleout.Options{
			Addr:        fmt.Sprintf("node-%d", i),
			OnNodeJoin:  func(scaleout.Node) { mu.Lock(); joined[i]++; mu.Unlock() },
			OnNodeLeave: func(n scaleout.Node) { mu.Lock(); left[i] = append(left[i], n.ID); mu.Unlock() },
		}
	})
	for i := range cl.nodes {
		for j := 0; j <= i; j++ { // node i holds i+1 clients
			cl.dial(fmt.Sprintf("c%d.%d", i, j), i, ns)
		}
	}
	waitNodes(t, cl, Nodes, func(list []scaleout.Node) bool {
		for _, n := range list {
			var idx int
			if _, err := fmt.Sscanf(n.Addr, "node-%d", &idx); err != nil || n.Conns != idx+1 || !slices.Contains(n.Namespaces, ns) {
				return false
			}
		}
		return list[0].Self
	})
	ids := map[string]bool{}
	for _, n := range clusterOf(t, cl.nodes[0]).Nodes() {
		ids[n.ID] = true
		if n.Uptime <= 0 || n.Stats.Conns != n.Conns {
			t.Errorf("node %s: uptime %v, Stats.Conns %d, Conns %d", n.Addr, n.Uptime, n.Stats.Conns, n.Conns)
		}
	}
	if len(ids) != Nodes {
		t.Fatalf("node ids not distinct: %v", ids)
	}
	gone := clusterOf(t, cl.nodes[2]).Nodes()[0].ID
	cl.nodes[2].srv.Close()
	cl.nodes[2].stop()
	stopped := time.Now()
	rest := &cluster{t: t, nodes: cl.nodes[:2]}
	waitNodes(t, rest, Nodes-1, nil)
	took := time.Since(stopped)
	t.Logf("a stopped node left the other nodes' lists %v after it stopped (NodeExpiry %v)", took.Round(time.Millisecond), scaleout.NodeExpiry)
	if took > scaleout.NodeExpiry+2*time.Second {
		t.Errorf("the stopped node left the list after %v; want within NodeExpiry + 2 s", took)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 0; i < 2; i++ {
		if !slices.Contains(left[i], gone) || joined[i] < Nodes-1 {
			t.Errorf("node %d: OnNodeLeave saw %v (want %s), OnNodeJoin %d times (want >= %d)", i, left[i], gone, joined[i], Nodes-1)
		}
	}
}

// testClusterConns: Conns and Count from any node list exactly the clients
// of every node, by namespace and by room.
func testClusterConns(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns, "other"}, false)
	cs := spread(cl, 2, ns)
	outsider := cl.dial("outsider", 1, "other")
	var inRoom []*client
	for _, c := range cs {
		if c.name[len(c.name)-1] == '0' { // one per node
			if _, err := c.join(context.Background(), ns, "r1"); err != nil {
				t.Fatal(err)
			}
			inRoom = append(inRoom, c)
		}
	}
	waitNodes(t, cl, Nodes, nil)
	idsOf := func(list []*client) []string {
		var ids []string
		for _, c := range list {
			ids = append(ids, c.id)
		}
		sort.Strings(ids)
		return ids
	}
	nodeOf := map[string]string{}
	for _, c := range append(slices.Clone(cs), outsider) {
		nodeOf[c.id] = clusterOf(t, cl.nodes[c.node]).Nodes()[0].ID
	}
	for _, q := range []struct {
		namespace, room string
		want            []string
	}{
		{ns, "", idsOf(cs)},
		{ns, "r1", idsOf(inRoom)},
		{"other", "", idsOf([]*client{outsider})},
		{"", "", idsOf(append(slices.Clone(cs), outsider))},
		{ns, "nobody", nil},
	} {
		for _, nd := range cl.nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			p, err := clusterOf(t, nd).Conns(ctx, q.namespace, q.room)
			n, missing, cerr := clusterOf(t, nd).Count(ctx, q.namespace, q.room)
			cancel()
			if err != nil || cerr != nil || len(p.Missing) != 0 || len(missing) != 0 {
				t.Fatalf("node %d: Conns(%q, %q): %v %v, missing %v %v", nd.idx, q.namespace, q.room, err, cerr, p.Missing, missing)
			}
			var got []string
			for _, c := range p.Conns {
				got = append(got, c.ID)
				if c.Node != nodeOf[c.ID] {
					t.Errorf("connection %s listed on node %s, it is on %s", c.ID, c.Node, nodeOf[c.ID])
				}
				if q.room != "" && !slices.Contains(c.Rooms[q.namespace], q.room) {
					t.Errorf("connection %s listed in room %s, its rooms %v", c.ID, q.room, c.Rooms)
				}
			}
			sort.Strings(got)
			if !slices.Equal(got, q.want) || n != len(q.want) {
				t.Errorf("node %d: Conns(%q, %q) = %v, Count %d; want %v", nd.idx, q.namespace, q.room, got, n, q.want)
			}
		}
	}
}

// testClusterControl: from node 0, a client on node 2 is made to join a
// room (it sees the join; room broadcasts reach it), to leave it (they no
// longer do) and is disconnected; an unknown id is ErrConnNotFound.
func testClusterControl(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 1, ns)
	target := cs[2]
	waitNodes(t, cl, Nodes, nil)
	ctl := clusterOf(t, cl.nodes[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	roomMsg := func(body string) { // from node 1, then a fence from node 1
		cl.nodes[1].srv.Broadcast(nil, neffos.Message{Namespace: ns, Room: "r2", Event: evMsg, Body: []byte(body)})
		cl.barrier(ns, cs...)
	}
	if err := ctl.JoinRoom(ctx, target.id, ns, "r2"); err != nil {
		t.Fatalf("JoinRoom of a client on another node: %v", err)
	}
	if !waitUntil(5*time.Second, func() bool { return target.nsc[ns].Room("r2") != nil }) {
		t.Fatal("the client did not see the remote JoinRoom")
	}
	roomMsg("in-r2")
	if target.count(withBody(evMsg, "in-r2")) != 1 || cs[1].count(withBody(evMsg, "in-r2")) != 0 {
		t.Errorf("room broadcast after the remote join: target got %d, a client outside got %d; want 1 and 0",
			target.count(withBody(evMsg, "in-r2")), cs[1].count(withBody(evMsg, "in-r2")))
	}
	if err := ctl.LeaveRoom(ctx, target.id, ns, "r2"); err != nil {
		t.Fatalf("LeaveRoom: %v", err)
	}
	if !waitUntil(5*time.Second, func() bool { return target.nsc[ns].Room("r2") == nil }) {
		t.Fatal("the client did not see the remote LeaveRoom")
	}
	roomMsg("after-leave")
	if n := target.count(withBody(evMsg, "after-leave")); n != 0 {
		t.Errorf("room broadcast after the remote leave reached the client %d times", n)
	}
	if err := ctl.Disconnect(ctx, "nobody-has-this-id"); !errors.Is(err, scaleout.ErrConnNotFound) {
		t.Errorf("Disconnect of an unknown id = %v, want ErrConnNotFound", err)
	}
	if err := ctl.Disconnect(ctx, target.id); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	if !waitUntil(5*time.Second, func() bool { return target.nsc[ns].Conn.IsClosed() }) {
		t.Fatal("the client was not disconnected")
	}
	// The local path: node 0's own client.
	if err := ctl.Disconnect(ctx, cs[0].id); err != nil || !waitUntil(5*time.Second, func() bool { return cs[0].nsc[ns].Conn.IsClosed() }) {
		t.Errorf("Disconnect of a local client: %v", err)
	}
}

// testClusterMessages: Emit reaches every other node's OnNodeMessage once;
// Survey collects one reply per node; with a node stopped, a Survey with a
// 1 s deadline names it and returns by the deadline. A client emitting
// events named like the control operations triggers none of them.
func testClusterMessages(t *testing.T, f Factory) {
	var mu sync.Mutex
	got := map[int][]string{} // node -> "from:event:body"
	var ids []string
	cl := newClusterOpts(t, f, Nodes, []string{ns}, false, func(nd *node) scaleout.Options {
		i := nd.idx
		return scaleout.Options{OnNodeMessage: func(from, event string, body []byte) ([]byte, error) {
			mu.Lock()
			got[i] = append(got[i], from+":"+event+":"+string(body))
			mu.Unlock()
			if event == "fail" {
				return nil, errors.New("refused")
			}
			return fmt.Appendf(nil, "reply-from-%d", i), nil
		}}
	})
	cs := spread(cl, 1, ns)
	waitNodes(t, cl, Nodes, nil)
	for _, nd := range cl.nodes {
		ids = append(ids, clusterOf(t, nd).Nodes()[0].ID)
	}
	// Client events named like the operations: plain events to neffos.
	for _, ev := range []string{"conns", "count", "disconnect", "join", "leave", "emit", "survey", "ctl"} {
		cs[1].nsc[ns].Emit(ev, []byte(cs[2].id))
	}
	if err := clusterOf(t, cl.nodes[0]).Emit("hello", []byte("world")); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got[1]) == 1 && len(got[2]) == 1
	}) {
		mu.Lock()
		t.Fatalf("Emit: handlers got %v", got)
	}
	mu.Lock()
	want := ids[0] + ":hello:world"
	if got[1][0] != want || got[2][0] != want || len(got[0]) != 0 {
		t.Errorf("Emit: handlers got %v; want %q on nodes 1 and 2 only", got, want)
	}
	mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	res, err := clusterOf(t, cl.nodes[0]).Survey(ctx, "q", nil)
	cancel()
	if err != nil || len(res.Replies) != 2 || string(res.Replies[ids[1]]) != "reply-from-1" || string(res.Replies[ids[2]]) != "reply-from-2" || len(res.Missing) != 0 {
		t.Fatalf("Survey = %+v, %v", res, err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	res, err = clusterOf(t, cl.nodes[1]).Survey(ctx, "fail", nil)
	cancel()
	if err != nil || len(res.Errors) != 2 || res.Errors[ids[0]] == nil {
		t.Errorf("Survey of failing handlers = %+v, %v", res, err)
	}
	if target := cs[2]; target.nsc[ns].Conn.IsClosed() {
		t.Error("a client's event named like an operation disconnected a client")
	}

	// A dead node: named, and the deadline kept.
	cl.nodes[2].srv.Close()
	cl.nodes[2].stop()
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	start := time.Now()
	res, err = clusterOf(t, cl.nodes[0]).Survey(ctx, "q", nil)
	took := time.Since(start)
	cancel()
	t.Logf("Survey with a stopped node: %v (%+v), returned after %v", err, res, took.Round(time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) || !slices.Equal(res.Missing, []string{ids[2]}) || string(res.Replies[ids[1]]) != "reply-from-1" {
		t.Errorf("Survey with node 2 stopped = %+v, %v; want node 1's reply, node 2 missing, DeadlineExceeded", res, err)
	}
	if took > time.Second+500*time.Millisecond {
		t.Errorf("Survey with a 1 s deadline returned after %v", took)
	}
}
