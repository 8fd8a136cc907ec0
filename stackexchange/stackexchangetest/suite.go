package stackexchangetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// Factory returns a new exchange for one node. Every exchange built with the
// same channel must reach the others (one app, several nodes); exchanges
// built with different channels must not see each other's messages. The
// suite closes each exchange (when it has a Close() error method) after its
// neffos server, at the end of the subtest.
//
// opts are the engine options the rule needs (ErrorHandler, Logger,
// QueueSize, ...), and the zero value for most rules; the factory passes
// them to the engine as they are (an exchange that is not built on
// scaleout.Exchange may ignore them). channel is the prefix: the
// adapter's channel argument or SubjectPrefix, scaleout.New's prefix.
type Factory func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange

// Nodes is the number of nodes each rule runs on.
const Nodes = 3

const ns = "chat"

// Run checks every rule of the scale-out contract against the exchanges f
// builds: Nodes in-process neffos servers on loopback, each with its own
// exchange, and real neffos Go clients over real websockets. Each rule is a
// named subtest; a rule that hangs panics with every goroutine's stack
// after a minute instead of hanging the run.
//
// Two heavy rules (a stalled client among 100 readers of 10,000
// broadcasts; 20,000 connect/disconnect cycles) are skipped with -short.
// The rules that look for deadlocks (Handlers/XLeft,
// Handlers/SlowErrorHandler) also bound every single neffos call they make
// to 5 s, and panic with every goroutine's stack when one is blocked longer.
//
// When the exchanges have the methods BrokerConns and NamespaceSubscribers
// of scaleout.Exchange (the broker reports what its server counts) the
// suite also checks the O(1)-per-node rule; when they
// implement Stats() scaleout.Stats it checks that disconnects release
// everything.
func Run(t *testing.T, f Factory) { run(t, f, !testing.Short()) }

// RunLight is Run without the two heavy rules, which exercise the engine's
// local fan-out and connection churn rather than the broker: for an
// exchange whose order under a 10,000-message burst is documented to be
// weaker (scaleout.Redundant: a broker out of step lets copies overtake)
// and whose brokers each pass Run on their own.
func RunLight(t *testing.T, f Factory) { run(t, f, false) }

func run(t *testing.T, f Factory, heavy bool) {
	rules := []struct {
		name    string
		fn      func(*testing.T, Factory)
		timeout time.Duration // default one minute
		heavy   bool
	}{
		{"Broadcast/Namespace", testBroadcastNamespace, 0, false},
		{"Broadcast/Room", testBroadcastRoom, 0, false},
		{"Broadcast/To", testBroadcastTo, 0, false},
		{"Broadcast/ExcludeConn", testExcludeConn, 0, false},
		{"Broadcast/ExcludeNSConn", testExcludeNSConn, 0, false},
		{"Broadcast/ExcludeID/FromOwnNode", func(t *testing.T, f Factory) { testExcludeID(t, f, true) }, 0, false},
		{"Broadcast/ExcludeID/FromOtherNode", func(t *testing.T, f Factory) { testExcludeID(t, f, false) }, 0, false},
		{"Broadcast/ToExcluded", testToExcluded, 0, false},
		{"Broadcast/ConcurrentFromAllNodes", testConcurrent, 0, false},
		{"Message/Binary", testBinary, 0, false},
		{"Message/Err", testErr, 0, false},
		{"Message/AnyBytes", testAnyBytes, 0, false},
		{"Message/Native", testNative, 0, false},
		{"Names/SemicolonUnicodeSpaces", testNames, 0, false},
		{"Ask/To/OtherNode", func(t *testing.T, f Factory) { testAskTo(t, f, false) }, 0, false},
		{"Ask/To/SameNode", func(t *testing.T, f Factory) { testAskTo(t, f, true) }, 0, false},
		{"Ask/NoTo/FirstReplyWins", testAskFirstReply, 0, false},
		{"Ask/Deadline", testAskDeadline, 0, false},
		{"Ask/ToNowhere/FailsFast", testAskNowhere, 0, false},
		{"Ask/Concurrent/NoBrokerConnPerAsk", testAskConcurrent, 0, false},
		{"Ask/KnownError", testAskKnownError, 0, false},
		{"Errors/Sentinels", testErrorSentinels, 0, false},
		{"Emit/ClientToServer", testEmitClientToServer, 0, false},
		{"Emit/ServerToClient", testEmitServerToClient, 0, false},
		{"Disconnect/ReleasesResources", testRelease, 0, false},
		{"SubscribeAfterReply/FreshClients", testFreshClients, 0, false},
		{"Scale/BrokerConnsPerNode", testScale, 0, false},
		{"Hostile/NamespaceNames", testHostileNamespaces, 0, false},
		{"Hostile/RoomNames", testHostileRooms, 0, false},
		{"Hostile/ConnectionIDs", testHostileIDs, 0, false},
		{"Hostile/NeffosPanicPaths", testNeffosPanics, 0, false},
		{"Reliability/RefusedByOnConnect/Released", testRefusedReleased, 0, false},
		{"Reliability/Backlog/Bounded", testBoundedBacklog, 0, false},
		{"Start/Concurrent", testConcurrentStart, 0, false},
		{"Reliability/SlowClient/OthersUnaffected", testSlowClient, 3 * time.Minute, true},
		{"Reliability/Churn20000/BackToBaseline", testChurn, 4 * time.Minute, true},
		{"Close/MidAsk", testCloseMidAsk, 0, false},
		{"Handlers/BroadcastFromLeaveAndDisconnect", testBroadcastFromLeaveHandlers, 0, false},
		{"Sequence/RestartedNode", testRestartedNode, 0, false},
		{"Handlers/XLeft", testXLeft, 2 * time.Minute, false},
		{"Handlers/SlowErrorHandler", testSlowErrorHandler, time.Minute, false},
		{"Cluster/Nodes/JoinAndLeave", testClusterNodes, 0, false},
		{"Cluster/Conns/ByNamespaceAndRoom", testClusterConns, 0, false},
		{"Cluster/Control/JoinLeaveDisconnect", testClusterControl, 0, false},
		{"Cluster/Messages/EmitSurvey", testClusterMessages, 0, false},
	}
	for _, r := range rules {
		if r.heavy && !heavy {
			continue
		}
		t.Run(r.name, func(t *testing.T) {
			d := r.timeout
			if d == 0 {
				d = time.Minute
			}
			watchdog(t, d)
			r.fn(t, f)
		})
	}
}

// spread dials perNode clients to every node on namespace ns.
func spread(cl *cluster, perNode int, nss ...string) []*client {
	var cs []*client
	for i := range cl.nodes {
		for j := 0; j < perNode; j++ {
			cs = append(cs, cl.dial(fmt.Sprintf("c%d.%d", i, j), i, nss...))
		}
	}
	return cs
}

func testBroadcastNamespace(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns, "other"}, false)
	cs := spread(cl, 2, ns)
	outsider := cl.dial("outsider", 1, "other")
	for _, nd := range cl.nodes {
		nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, Body: []byte(fmt.Sprintf("hello-%d", nd.idx))})
	}
	cl.barrier(ns, cs...)
	for _, c := range cs {
		for i := range cl.nodes {
			expectCount(t, "every client of the namespace on every node gets it exactly once", c, 1, evMsg, fmt.Sprintf("hello-%d", i))
		}
	}
	cl.barrier("other", outsider)
	if n := outsider.count(func(r received) bool { return r.event == evMsg }); n != 0 {
		t.Errorf("a client of another namespace got %d messages, want 0", n)
	}
}

func testBroadcastRoom(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 2, ns)
	var members, others []*client
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, c := range cs {
		if i%2 == 0 {
			if _, err := c.join(ctx, ns, "room1"); err != nil {
				t.Fatalf("join room: %v", err)
			}
			members = append(members, c)
		} else {
			others = append(others, c)
		}
	}
	for _, nd := range cl.nodes {
		nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Room: "room1", Event: evMsg, Body: []byte(fmt.Sprintf("room-%d", nd.idx))})
	}
	cl.barrier(ns, cs...)
	for i := range cl.nodes {
		body := fmt.Sprintf("room-%d", i)
		for _, c := range members {
			expectCount(t, "room members on every node get it exactly once", c, 1, evMsg, body)
		}
		for _, c := range others {
			expectCount(t, "clients outside the room get nothing", c, 0, evMsg, body)
		}
	}
	for _, c := range members {
		for _, r := range c.messages() {
			if r.event == evMsg && r.room != "room1" {
				t.Errorf("room message arrived with room %q, want room1", r.room)
			}
		}
	}
}

func testBroadcastTo(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 2, ns)
	target := cs[len(cs)-1] // on the last node
	for _, nd := range cl.nodes {
		nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, To: target.id, Body: []byte(fmt.Sprintf("to-%d", nd.idx))})
	}
	cl.barrier(ns, cs...)
	// To messages travel on the client's own channel, which a sharded
	// broker may keep on another server than the fences: wait for them.
	target.waitFor(15*time.Second, Nodes, func(r received) bool { return strings.HasPrefix(string(r.body), "to-") })
	for i := range cl.nodes {
		body := fmt.Sprintf("to-%d", i)
		for _, c := range cs {
			want := 0
			if c == target {
				want = 1
			}
			expectCount(t, "only the To client gets it, once, wherever it is", c, want, evMsg, body)
		}
	}
}

func expectAllBut(t *testing.T, rule string, cs []*client, excluded *client, body string) {
	t.Helper()
	for _, c := range cs {
		want := 1
		if c == excluded {
			want = 0
		}
		expectCount(t, rule, c, want, evMsg, body)
	}
}

func testExcludeConn(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 2, ns)
	sender := cs[2] // node 1
	cl.nodes[sender.node].srv.Broadcast(cl.conn(sender), neffos.Message{Namespace: ns, Event: evMsg, Body: []byte("x-conn")})
	cl.barrier(ns, cs...)
	expectAllBut(t, "Broadcast(conn) reaches everyone but conn, on every node", cs, sender, "x-conn")
}

func testExcludeNSConn(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 2, ns)
	sender := cs[4] // node 2
	nsc := cl.conn(sender).Namespace(ns)
	if nsc == nil {
		t.Fatal("server-side NSConn missing")
	}
	cl.nodes[sender.node].srv.Broadcast(nsc, neffos.Message{Namespace: ns, Event: evMsg, Body: []byte("x-nsconn")})
	cl.barrier(ns, cs...)
	expectAllBut(t, "Broadcast(nsConn) reaches everyone but nsConn, on every node", cs, sender, "x-nsconn")
}

func testExcludeID(t *testing.T, f Factory, ownNode bool) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 2, ns)
	excluded := cs[2] // node 1
	from := excluded.node
	if !ownNode {
		from = 0
	}
	cl.nodes[from].srv.Broadcast(neffos.Exclude(excluded.id), neffos.Message{Namespace: ns, Event: evMsg, Body: []byte("x-id")})
	cl.barrier(ns, cs...)
	expectAllBut(t, "Broadcast(neffos.Exclude(id)) reaches everyone but id, on every node", cs, excluded, "x-id")
}

// testToExcluded: a message To a client that the same Broadcast excludes,
// by neffos.Exclude(id) or by its *NSConn, reaches nobody: neffos checks
// the exclusion first. From the client's own node and from another node.
func testToExcluded(t *testing.T, f Factory) {
	const rule = "Broadcast/ToExcluded"
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 2, ns)
	target := cs[2] // node 1
	nsc := cl.conn(target).Namespace(ns)
	if nsc == nil {
		t.Fatal("server-side NSConn missing")
	}
	other := (target.node + 1) % Nodes
	// The exclusion is passed straight to Broadcast: its parameter's type
	// differs between neffos v0.0.24 (fmt.Stringer) and v0.0.25.
	send := func(from int, byNSConn bool, body string) {
		m := neffos.Message{Namespace: ns, Event: evMsg, To: target.id, Body: []byte(body)}
		if byNSConn {
			cl.nodes[from].srv.Broadcast(nsc, m)
		} else {
			cl.nodes[from].srv.Broadcast(neffos.Exclude(target.id), m)
		}
	}
	cases := []struct {
		what     string
		from     int
		byNSConn bool
	}{
		{"Broadcast(neffos.Exclude(id), To: id) from its own node", target.node, false},
		{"Broadcast(neffos.Exclude(id), To: id) from another node", other, false},
		{"Broadcast(nsConn, To: nsConn's id) from its own node", target.node, true},
		{"Broadcast(nsConn, To: nsConn's id) from another node", other, true},
	}
	for i, c := range cases {
		send(c.from, c.byNSConn, fmt.Sprintf("to-excluded-%d", i))
	}
	cl.barrier(ns, cs...) // anything late has arrived by now
	for i, c := range cases {
		for _, o := range cs {
			if n := o.count(withBody(evMsg, fmt.Sprintf("to-excluded-%d", i))); n != 0 {
				t.Errorf("%s: %s: client %s on node %d (the target: %v) got it %d times, want 0", rule, c.what, o.name, o.node, o == target, n)
			}
		}
	}
}

func testConcurrent(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 2, ns)
	const perNode = 100
	var wg sync.WaitGroup
	for _, nd := range cl.nodes {
		wg.Add(1)
		go func(nd *node) {
			defer wg.Done()
			for i := 0; i < perNode; i++ {
				nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, Body: []byte(fmt.Sprintf("%d:%d", nd.idx, i))})
			}
		}(nd)
	}
	wg.Wait()
	cl.barrier(ns, cs...)
	for _, c := range cs {
		last := map[string]int{}
		seen := map[string]int{}
		for _, r := range c.messages() {
			if r.event != evMsg {
				continue
			}
			seen[string(r.body)]++
			src, seq, _ := strings.Cut(string(r.body), ":")
			var n int
			fmt.Sscan(seq, &n)
			if prev, ok := last[src]; ok && n <= prev {
				t.Errorf("client %s: messages from node %s out of order: %d after %d", c.name, src, n, prev)
			}
			last[src] = n
		}
		if len(seen) != Nodes*perNode {
			t.Errorf("client %s got %d distinct messages, want %d", c.name, len(seen), Nodes*perNode)
		}
		for body, n := range seen {
			if n != 1 {
				t.Errorf("client %s got %q %d times, want exactly once", c.name, body, n)
			}
		}
	}
}

func testBinary(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 1, ns)
	body := make([]byte, 256)
	for i := range body {
		body[i] = byte(i)
	}
	cl.nodes[0].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: "bin", Body: body, SetBinary: true})
	cl.barrier(ns, cs...)
	for _, c := range cs {
		var n int
		for _, r := range c.messages() {
			if r.event != "bin" {
				continue
			}
			n++
			if !r.binary {
				t.Errorf("client %s on node %d: SetBinary message arrived as text", c.name, c.node)
			}
			if !bytes.Equal(r.body, body) {
				t.Errorf("client %s: binary body changed", c.name)
			}
		}
		if n != 1 {
			t.Errorf("client %s got the binary message %d times, want 1", c.name, n)
		}
	}
}

func testErr(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 1, ns)
	cl.nodes[1].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: "failed", Err: errBoom})
	cl.barrier(ns, cs...)
	for _, c := range cs {
		var n int
		for _, r := range c.messages() {
			if r.event != "failed" {
				continue
			}
			n++
			if r.err == nil || r.err.Error() != errBoom.Error() {
				t.Errorf("client %s on node %d: Err = %v, want %q", c.name, c.node, r.err, errBoom)
			}
		}
		if n != 1 {
			t.Errorf("client %s got the error message %d times, want 1", c.name, n)
		}
	}
}

func testAnyBytes(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 1, ns)
	body := []byte("a;b;;c;0;1;\x00\xff\xfe invalid utf8 \xc3\x28 ;")
	cl.nodes[2].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: "raw", Body: body})
	cl.barrier(ns, cs...)
	for _, c := range cs {
		var n int
		for _, r := range c.messages() {
			if r.event == "raw" {
				n++
				if !bytes.Equal(r.body, body) {
					t.Errorf("client %s on node %d: body %q, want %q", c.name, c.node, r.body, body)
				}
			}
		}
		if n != 1 {
			t.Errorf("client %s got the message %d times, want 1", c.name, n)
		}
	}
}

func testNative(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, nil, true)
	var cs []*client
	for i := range cl.nodes {
		cs = append(cs, cl.dial(fmt.Sprintf("native%d", i), i))
	}
	// A native-only connection is connected to "" as soon as it is
	// accepted; wait until every node's exchange knows its client.
	for _, nd := range cl.nodes {
		nd := nd
		if !waitUntil(10*time.Second, func() bool { n := 0; nd.conns.Range(func(any, any) bool { n++; return true }); return n == 1 }) {
			t.Fatalf("node %d never saw its native client", nd.idx)
		}
	}
	body := []byte("native;bytes \x00 ü")
	cl.nodes[0].srv.Broadcast(nil, neffos.Message{Namespace: "", IsNative: true, Body: body})
	for _, c := range cs {
		if !c.waitFor(10*time.Second, 1, func(r received) bool { return bytes.Equal(r.body, body) }) {
			t.Errorf("native client %s on node %d never got the native message", c.name, c.node)
		}
	}
	// Fence: a second native message; the first must not be duplicated.
	cl.nodes[1].srv.Broadcast(nil, neffos.Message{Namespace: "", IsNative: true, Body: []byte("native-fence")})
	for _, c := range cs {
		if !c.waitFor(10*time.Second, 1, func(r received) bool { return string(r.body) == "native-fence" }) {
			t.Fatalf("native client %s never got the fence", c.name)
		}
		if n := c.count(func(r received) bool { return bytes.Equal(r.body, body) }); n != 1 {
			t.Errorf("native client %s got the native message %d times, want 1", c.name, n)
		}
	}
}

func testNames(t *testing.T, f Factory) {
	odd := "semi;colon ünïcødé 名前 with spaces"
	room := "room;1 ü m"
	event := "ev;ent ü"
	cl := newCluster(t, f, Nodes, []string{odd, ns}, false)
	cs := spread(cl, 2, odd)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var members []*client
	for i, c := range cs {
		if i%2 == 0 {
			if _, err := c.join(ctx, odd, room); err != nil {
				t.Fatalf("join room %q: %v", room, err)
			}
			members = append(members, c)
		}
	}
	cl.nodes[0].srv.Broadcast(nil, neffos.Message{Namespace: odd, Event: event, Body: []byte("to-all")})
	cl.nodes[2].srv.Broadcast(nil, neffos.Message{Namespace: odd, Room: room, Event: event, Body: []byte("to-room")})
	cl.barrier(odd, cs...)
	for i, c := range cs {
		for _, r := range c.messages() {
			if r.event == event && r.ns != odd {
				t.Errorf("namespace arrived as %q, want %q", r.ns, odd)
			}
		}
		expectCount(t, "names with ';', unicode and spaces arrive as sent", c, 1, event, "to-all")
		want := 0
		if i%2 == 0 {
			want = 1
		}
		expectCount(t, "a room named with ';', unicode and spaces reaches its members only", c, want, event, "to-room")
	}
	for _, c := range members {
		for _, r := range c.messages() {
			if string(r.body) == "to-room" && r.room != room {
				t.Errorf("room arrived as %q, want %q", r.room, room)
			}
		}
	}
}

func ask(t *testing.T, srv *neffos.Server, d time.Duration, m neffos.Message) (neffos.Message, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return srv.Ask(ctx, m)
}

func testAskTo(t *testing.T, f Factory, sameNode bool) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 2, ns)
	target := cs[5] // node 2
	from := 0
	if sameNode {
		from = target.node
	}
	reply, err := ask(t, cl.nodes[from].srv, 10*time.Second, neffos.Message{Namespace: ns, Event: evQuestion, To: target.id, Body: []byte("q1")})
	if err != nil {
		t.Fatalf("Server.Ask to a client on node %d from node %d: %v", target.node, from, err)
	}
	if want := "answer:" + target.name + ":q1"; string(reply.Body) != want {
		t.Fatalf("Ask reply body %q, want %q", reply.Body, want)
	}
}

// testAskKnownError: a client's handler returns an error registered with
// neffos.RegisterKnownError to a Server.Ask; the asking server gets that
// very error (errors.Is), from the same node and from another node, as
// neffos's own deserializer resolves it.
func testAskKnownError(t *testing.T, f Factory) {
	const rule = "Ask/KnownError"
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 1, ns)
	target := cs[2] // node 2
	for _, from := range []int{target.node, 0} {
		where := "the same node"
		if from != target.node {
			where = "another node"
		}
		_, err := ask(t, cl.nodes[from].srv, 10*time.Second, neffos.Message{Namespace: ns, Event: evQuestionErr, To: target.id, Body: []byte("q")})
		if !errors.Is(err, errKnown) {
			t.Errorf("%s: Server.Ask from %s to a client whose handler returns a known error: err = %v (%T), want errors.Is(err, %q)", rule, where, err, err, errKnown)
		}
	}
}

func testAskFirstReply(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	// clients on nodes 1 and 2 only: the reply must cross nodes.
	cl.dial("a", 1, ns)
	cl.dial("b", 2, ns)
	reply, err := ask(t, cl.nodes[0].srv, 10*time.Second, neffos.Message{Namespace: ns, Event: evQuestion, Body: []byte("anyone")})
	if err != nil {
		t.Fatalf("Server.Ask without To: %v", err)
	}
	if b := string(reply.Body); b != "answer:a:anyone" && b != "answer:b:anyone" {
		t.Fatalf("Ask without To: reply %q, want one client's answer", b)
	}
}

func testAskDeadline(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	target := cl.dial("mute", 2, ns)
	start := time.Now()
	_, err := ask(t, cl.nodes[0].srv, 300*time.Millisecond, neffos.Message{Namespace: ns, Event: evSilent, To: target.id})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ask to a client that never replies: err %v after %v, want context.DeadlineExceeded", err, time.Since(start))
	}
	if !target.waitFor(10*time.Second, 1, func(r received) bool { return r.event == evSilent }) {
		t.Errorf("the question never reached the client")
	}
}

func testAskNowhere(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	spread(cl, 1, ns)
	// The deadline is far beyond the rule's watchdog: only a fast failure
	// passes.
	_, err := ask(t, cl.nodes[0].srv, 5*time.Minute, neffos.Message{Namespace: ns, Event: evQuestion, To: "no-such-connection"})
	if err == nil {
		t.Fatal("Ask to a connection no node holds returned no error")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ask to a connection no node holds waited for its deadline: %v", err)
	}
}

func testAskConcurrent(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 3, ns)
	// Sample every node's broker connections while the Asks run: a
	// connection per Ask would show up here.
	stop := make(chan struct{})
	sampled := make(chan []int, 1)
	go func() {
		peak := brokerConns(t, cl)
		for {
			select {
			case <-stop:
				sampled <- peak
				return
			default:
			}
			for i, n := range brokerConns(t, cl) {
				peak[i] = max(peak[i], n)
			}
		}
	}()
	const asks = 100
	var wg sync.WaitGroup
	errs := make(chan error, asks)
	for i := 0; i < asks; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			target := cs[i%len(cs)]
			from := cl.nodes[(target.node+1+i%2)%Nodes]
			body := fmt.Sprintf("q%d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			reply, err := from.srv.Ask(ctx, neffos.Message{Namespace: ns, Event: evQuestion, To: target.id, Body: []byte(body)})
			if err != nil {
				errs <- fmt.Errorf("ask %d: %w", i, err)
				return
			}
			if want := "answer:" + target.name + ":" + body; string(reply.Body) != want {
				errs <- fmt.Errorf("ask %d: reply %q, want %q", i, reply.Body, want)
			}
		}(i)
	}
	wg.Wait()
	close(stop)
	peak := <-sampled
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, n := range peak {
		if n > 3 {
			t.Errorf("node %d: up to %d broker connections during %d concurrent Asks, want at most 3: an Ask must not open a broker connection", i, n, asks)
		}
	}
}

// inspector is what the suite detects on an exchange to check the
// O(1)-per-node rule: the broker server's own counts (scaleout.Exchange and
// the adapters have these methods; see scaleout.Exchange.BrokerConns).
type inspector interface {
	BrokerConns(ctx context.Context) (int, error)
	NamespaceSubscribers(ctx context.Context, namespace string) (int, error)
}

// brokerConns returns each node's broker connection count, -1 where the
// exchange cannot tell.
func brokerConns(t *testing.T, cl *cluster) []int {
	t.Helper()
	out := make([]int, len(cl.nodes))
	for i, nd := range cl.nodes {
		out[i] = -1
		in, ok := nd.exc.(inspector)
		if !ok {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		n, err := in.BrokerConns(ctx)
		cancel()
		if errors.Is(err, errors.ErrUnsupported) {
			continue
		}
		if err != nil {
			t.Fatalf("node %d: BrokerConns: %v", i, err)
		}
		out[i] = n
	}
	return out
}

func testEmitClientToServer(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 1, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range cs {
		c.nsc[ns].Emit(evEmit, []byte("emit-"+c.name))
		r, err := c.join(ctx, ns, "r")
		if err != nil {
			t.Fatal(err)
		}
		r.Emit(evEmit, []byte("room-emit-"+c.name))
	}
	for _, c := range cs {
		for _, body := range []string{"emit-" + c.name, "room-emit-" + c.name} {
			if !waitUntil(10*time.Second, func() bool { return len(cl.emitted(body)) > 0 }) {
				t.Fatalf("server never got %q", body)
			}
		}
	}
	// Round trip per client: its server handled everything it sent before.
	for _, c := range cs {
		c.nsc[ns].Emit(evEcho, []byte("sync-"+c.name))
		if !c.waitFor(10*time.Second, 1, withBody(evMsg, "sync-"+c.name)) {
			t.Fatalf("echo from server never came back")
		}
	}
	for _, c := range cs {
		for _, body := range []string{"emit-" + c.name, "room-emit-" + c.name} {
			got := cl.emitted(body)
			if len(got) != 1 || got[0] != c.node {
				t.Errorf("NSConn/Room.Emit %q handled by nodes %v, want exactly once by node %d", body, got, c.node)
			}
		}
	}
}

func testEmitServerToClient(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	cs := spread(cl, 2, ns)
	for _, c := range cs {
		c.nsc[ns].Emit(evEcho, []byte("echo-"+c.name))
	}
	cl.barrier(ns, cs...)
	for _, c := range cs {
		if !c.waitFor(10*time.Second, 1, withBody(evMsg, "echo-"+c.name)) {
			t.Fatalf("client %s never got its echo", c.name)
		}
	}
	cl.barrier(ns, cs...)
	for _, c := range cs {
		for _, o := range cs {
			want := 0
			if o == c {
				want = 1
			}
			expectCount(t, "server-side NSConn.Emit reaches its own client once and nobody else", c, want, evMsg, "echo-"+o.name)
		}
	}
}

type statser interface{ Stats() scaleout.Stats }

func testRelease(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	base := stats(cl)
	for _, c := range spread(cl, 10, ns) {
		c.c.Close()
	}
	if base == nil {
		// Without Stats, at least the servers must see everyone leave.
		for _, nd := range cl.nodes {
			if !waitUntil(20*time.Second, func() bool { return nd.srv.GetTotalConnections() == 0 }) {
				t.Errorf("node %d still counts %d connections", nd.idx, nd.srv.GetTotalConnections())
			}
		}
		return
	}
	waitBaseline(t, cl, base, "every client left")
}

func testFreshClients(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	const fresh = 500
	const parallel = 8
	var (
		mu     sync.Mutex
		misses []int
	)
	runParallel(parallel, func(i int) bool { return i < fresh }, func(i int) {
		c, err := cl.tryDial(fmt.Sprintf("fresh%d", i), i%Nodes, ns)
		if err != nil {
			t.Errorf("dial fresh client %d: %v", i, err)
			return
		}
		// The moment Connect returned, another node broadcasts.
		body := fmt.Sprintf("welcome-%d", i)
		cl.nodes[(i+1)%Nodes].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, Body: []byte(body)})
		if !c.waitFor(5*time.Second, 1, withBody(evMsg, body)) {
			mu.Lock()
			misses = append(misses, i)
			mu.Unlock()
		}
		c.c.Close()
	})
	if len(misses) > 0 {
		t.Errorf("%d of %d fresh clients missed a broadcast sent right after their Connect returned (first: %v)", len(misses), fresh, misses[:min(len(misses), 10)])
	}
}

func testScale(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	const clients = 300
	var cs []*client
	for i := 0; i < clients; i++ {
		cs = append(cs, cl.dial(fmt.Sprintf("s%d", i), i%Nodes, ns))
	}
	cl.nodes[0].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, Body: []byte("scale")})
	cl.barrier(ns, cs...)
	for _, c := range cs {
		expectCount(t, "300 clients on 3 nodes each get a broadcast once", c, 1, evMsg, "scale")
	}
	conns := brokerConns(t, cl)
	for i, n := range conns {
		if n < 0 {
			t.Logf("node %d: broker connection count unsupported by this exchange", i)
			continue
		}
		t.Logf("node %d: %d broker connections for %d clients", i, n, clients/Nodes)
		if n > 3 {
			t.Errorf("node %d holds %d broker connections for %d clients, want at most 3", i, n, clients/Nodes)
		}
	}
	in, ok := cl.nodes[0].exc.(inspector)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	subs, err := in.NamespaceSubscribers(ctx, ns)
	if errors.Is(err, errors.ErrUnsupported) {
		t.Logf("namespace subscriber count unsupported by this exchange")
		return
	}
	if err != nil {
		t.Fatalf("NamespaceSubscribers: %v", err)
	}
	t.Logf("namespace channel subscribers: %d for %d nodes", subs, Nodes)
	if subs != Nodes {
		t.Errorf("namespace channel has %d subscribers, want exactly one per node (%d)", subs, Nodes)
	}
}
