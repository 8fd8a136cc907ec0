package stackexchangetest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// hostileNames are names that must never reach into each other's channels.
func hostileNames() []string {
	long := strings.Repeat("n", 10<<10)
	return []string{"*", ">", "?", "[", ".", ";", "a.b", "a_b", "a b", "a\nb", "a\tb", "ünïcødé 名前", "",
		long, long[:len(long)-1] + "m"}
}

// testHostileNamespaces: a client of each hostile namespace gets the
// broadcasts of its namespace only.
func testHostileNamespaces(t *testing.T, f Factory) {
	names := hostileNames()
	cl := newCluster(t, f, Nodes, names, false)
	byNS := map[string][]*client{}
	for i, name := range names {
		for n := range cl.nodes {
			byNS[name] = append(byNS[name], cl.dial(fmt.Sprintf("ns%d@%d", i, n), n, name))
		}
	}
	for i, name := range names {
		cl.nodes[i%Nodes].srv.Broadcast(nil, neffos.Message{Namespace: name, Event: evMsg, Body: []byte("ns" + strconv.Itoa(i))})
	}
	for _, name := range names {
		cl.barrier(name, byNS[name]...)
	}
	expectOwn(t, "namespace", names, byNS, "ns")
}

// expectOwn checks that each group's clients got exactly one evMsg, the
// one with body prefix+index of the group's name.
func expectOwn(t *testing.T, what string, names []string, groups map[string][]*client, prefix string) {
	t.Helper()
	for i, name := range names {
		for _, c := range groups[name] {
			if n := c.count(func(r received) bool { return r.event == evMsg }); n != 1 {
				t.Errorf("client of %s %.20q got %d messages, want only its %s's one", what, name, n, what)
			}
			expectCount(t, "hostile "+what+" names never cross-talk", c, 1, evMsg, prefix+strconv.Itoa(i))
		}
	}
}

// testHostileRooms: members of each hostile room get that room's broadcast
// only.
func testHostileRooms(t *testing.T, f Factory) {
	names := hostileNames()
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var all []*client
	members := map[string][]*client{}
	for i, room := range names {
		if room == "" {
			continue // the empty room is "no room"
		}
		c := cl.dial(fmt.Sprintf("room%d", i), i%Nodes, ns)
		if _, err := c.join(ctx, ns, room); err != nil {
			t.Fatalf("join room %.20q: %v", room, err)
		}
		members[room] = append(members[room], c)
		all = append(all, c)
	}
	for i, room := range names {
		if room != "" {
			cl.nodes[(i+1)%Nodes].srv.Broadcast(nil, neffos.Message{Namespace: ns, Room: room, Event: evMsg, Body: []byte("room" + strconv.Itoa(i))})
		}
	}
	cl.barrier(ns, all...)
	expectOwn(t, "room", names, members, "room")
}

// testHostileIDs: a message To each hostile connection id reaches that
// client only.
func testHostileIDs(t *testing.T, f Factory) {
	var ids []string
	for _, n := range hostileNames() {
		if n != "" { // a neffos connection cannot have an empty id
			ids = append(ids, n)
		}
	}
	ids = append(ids, "neffos(0x-looks-like-a-server-id")
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	var all []*client
	for i, id := range ids {
		c, err := cl.dialWith(fmt.Sprintf("id%d", i), i%Nodes, dialOpts{id: id}, ns)
		if err != nil {
			t.Fatalf("dial with id %.20q: %v", id, err)
		}
		if c.id != id {
			t.Fatalf("server gave id %.20q, want %.20q", c.id, id)
		}
		all = append(all, c)
	}
	for i, id := range ids {
		cl.nodes[(i+1)%Nodes].srv.Broadcast(nil, neffos.Message{Namespace: ns, To: id, Event: evMsg, Body: []byte("to" + strconv.Itoa(i))})
	}
	cl.barrier(ns, all...)
	for i, c := range all {
		if n := c.count(func(r received) bool { return r.event == evMsg }); n != 1 {
			t.Errorf("client with id %.20q got %d direct messages, want only its own", ids[i], n)
		}
		expectCount(t, "hostile connection ids never cross-talk", c, 1, evMsg, "to"+strconv.Itoa(i))
	}
}

// testNeffosPanics: messages that make neffos's own exchanges panic (a Room
// without a Namespace; a client's Ask re-broadcast, carrying both a wait
// token and FromExplicit) never crash a node through the exchange.
func testNeffosPanics(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns, ""}, false)
	cs := spread(cl, 1, ns)
	cl.nodes[0].srv.Broadcast(nil, neffos.Message{Room: "room-without-namespace", Event: evMsg, Body: []byte("x")})

	// Client 0 asks its server, whose handler re-broadcasts the question to
	// everyone else: the message has a wait token and, through
	// Broadcast(nsConn), FromExplicit.
	asker := cs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	asker.settle()
	reply, err := asker.nsc[ns].Ask(ctx, evRebroadcast, []byte("asked-and-rebroadcast"))
	if err != nil {
		t.Fatalf("client Ask to a handler that re-broadcasts: %v", err)
	}
	if string(reply.Body) != "rebroadcast" {
		t.Fatalf("reply %q, want %q", reply.Body, "rebroadcast")
	}
	cl.barrier(ns, cs...)
	for _, c := range cs[1:] {
		expectCount(t, "a client's Ask re-broadcast with Broadcast(nsConn) reaches the others once", c, 1, evMsg, "asked-and-rebroadcast")
	}
	expectCount(t, "the re-broadcast skips the asking client", asker, 0, evMsg, "asked-and-rebroadcast")
}

// testRefusedReleased: connections refused by the server's OnConnect
// (with OnDisconnect set, where neffos v0.0.24 never tells the exchange)
// leave nothing behind in the exchange.
func testRefusedReleased(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	base := stats(cl)
	for i := 0; i < 30; i++ {
		c, err := cl.dialWith(fmt.Sprintf("refused%d", i), i%Nodes, dialOpts{refuse: true})
		if err == nil {
			c.c.Close()
			t.Fatalf("dial %d: the server's OnConnect refusal did not reach the client", i)
		}
	}
	if base == nil {
		t.Log("the exchange has no Stats() scaleout.Stats: only the refusals were checked")
		return
	}
	waitBaseline(t, cl, base, "refused connections")
}

func stats(cl *cluster) []scaleout.Stats {
	var out []scaleout.Stats
	for _, nd := range cl.nodes {
		s, ok := nd.exc.(statser)
		if !ok {
			return nil
		}
		out = append(out, s.Stats())
	}
	return out
}

func waitBaseline(t *testing.T, cl *cluster, base []scaleout.Stats, what string) {
	t.Helper()
	for i, nd := range cl.nodes {
		s := nd.exc.(statser)
		ok := waitUntil(30*time.Second, func() bool {
			st := s.Stats()
			return st.Conns == base[i].Conns && st.Subscriptions == base[i].Subscriptions
		})
		if !ok {
			st := s.Stats()
			t.Errorf("node %d after %s: %d connections and %d subscriptions, want the baseline %d and %d",
				i, what, st.Conns, st.Subscriptions, base[i].Conns, base[i].Subscriptions)
		}
	}
}

// testSlowClient: one client stops reading while 100 others receive 10,000
// broadcasts from another node. The others get every message, in order,
// once; then 25,000 more messages (more than the default queue of 16,384)
// go to the stalled client alone: what its
// queue cannot hold is dropped and counted, and memory stays bounded.
func testSlowClient(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	const others, messages = 100, 10000
	var cs []*client
	for i := 0; i < others; i++ {
		c, err := cl.dialWith(fmt.Sprintf("reader%d", i), i%Nodes, dialOpts{seq: true}, ns)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	slow, err := cl.dialWith("slow", 1, dialOpts{slow: true, seq: true}, ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(slow.sock.Unstall)
	base := stats(cl)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	slow.sock.Stall()
	body := make([]byte, 0, 8)
	for i := 0; i < messages; i++ {
		body = strconv.AppendInt(body[:0], int64(i), 10)
		cl.nodes[0].srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evMsg, Body: append([]byte(nil), body...)})
	}
	for _, c := range cs {
		ok := waitUntil(90*time.Second, func() bool { n, bad := c.seqState(); return n == messages || bad > 0 })
		next, bad := c.seqState()
		if !ok || bad > 0 || next != messages {
			for i, st := range stats(cl) {
				t.Logf("node %d: %+v", i, st)
			}
			t.Fatalf("reader %s on node %d: %d of %d messages in order, %d out of order or repeated, while another client stalled", c.name, c.node, next, messages, bad)
		}
	}
	// Then far more than any sane queue holds, for the stalled client only.
	const extra = 25000
	for i := 0; i < extra; i++ {
		cl.nodes[1].srv.Broadcast(nil, neffos.Message{Namespace: ns, To: slow.id, Event: evMsg, Body: []byte("x")})
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("heap in use grew by %d KiB over %d broadcasts and %d messages to the stalled client", grown>>10, messages, extra)
	if grown > 256<<20 {
		t.Errorf("heap grew by %d MiB with one stalled client: not bounded", grown>>20)
	}
	if base != nil {
		st := cl.nodes[1].exc.(statser).Stats()
		t.Logf("slow client's node: %d messages dropped", st.Dropped-base[1].Dropped)
		if st.Dropped == base[1].Dropped {
			t.Errorf("the stalled client's node dropped nothing: its queue is not bounded (or the socket never filled)")
		}
	}
}

// testChurn: 20,000 connect/disconnect cycles over the nodes leave broker
// subscriptions and goroutines at their baseline.
func testChurn(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	base := stats(cl)
	goroutines := runtime.NumGoroutine()
	const cycles, parallel = 20000, 16
	var failed failures
	deadline := time.Now().Add(150 * time.Second)
	done := runParallel(parallel, func(i int) bool { return i < cycles && time.Now().Before(deadline) }, func(i int) {
		c, err := cl.dialWith("churn", i%Nodes, dialOpts{}, ns)
		if failed.add(err) {
			return
		}
		c.c.Close()
	})
	if done < cycles {
		t.Errorf("only %d of %d cycles ran within the time bound", done, cycles)
	}
	if n, first := failed.get(); n > 0 {
		t.Errorf("%d of %d connect cycles failed, first: %v", n, done, first)
	}
	if base != nil {
		waitBaseline(t, cl, base, fmt.Sprintf("%d connect/disconnect cycles", done))
	}
	// Client goroutines end when their connections close; allow a few for
	// runtime and net/http bookkeeping.
	if !waitUntil(30*time.Second, func() bool { return runtime.NumGoroutine() <= goroutines+10 }) {
		t.Errorf("goroutines: %d after churn, %d before", runtime.NumGoroutine(), goroutines)
	}
}

// testCloseMidAsk: closing the asking node's exchange while an Ask waits
// ends the Ask, and Close is idempotent.
func testCloseMidAsk(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{ns}, false)
	target := cl.dial("mute", 2, ns)
	closer, ok := cl.nodes[0].exc.(interface{ Close() error })
	if !ok {
		t.Log("the exchange has no Close method: nothing to check")
		return
	}
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		_, err := cl.nodes[0].srv.Ask(ctx, neffos.Message{Namespace: ns, Event: evSilent, To: target.id})
		errc <- err
	}()
	if !target.waitFor(10*time.Second, 1, func(r received) bool { return r.event == evSilent }) {
		t.Fatal("the question never reached the client")
	}
	if err := closer.Close(); err != nil {
		t.Fatalf("Close with an Ask pending: %v", err)
	}
	err := <-errc // the rule's watchdog fails a Close that leaves the Ask waiting
	if err == nil {
		t.Fatal("a pending Ask returned no error after Close")
	}
	if _, ours := cl.nodes[0].exc.(scaleout.StackExchange); ours && !errors.Is(err, scaleout.ErrClosed) {
		t.Errorf("pending Ask after Close: %v, want scaleout.ErrClosed", err)
	}
	if err := closer.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// testBroadcastFromLeaveHandlers: neffos calls OnRoomLeft and
// OnNamespaceDisconnect holding the connection's lock; a Server.Broadcast
// from there must neither deadlock the node nor its Close.
func testBroadcastFromLeaveHandlers(t *testing.T, f Factory) {
	cl := newCluster(t, f, Nodes, []string{nsLeavers}, false)
	watcher := cl.dial("watcher", 0, nsLeavers)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var leavers []*client
	for i := 0; i < 3; i++ {
		c := cl.dial(fmt.Sprintf("leaver%d", i), 1+i%2, nsLeavers)
		if _, err := c.join(ctx, nsLeavers, "r"); err != nil {
			t.Fatal(err)
		}
		leavers = append(leavers, c)
	}
	got := func(body string) bool {
		return watcher.waitFor(20*time.Second, 1, withBody(evLeft, body))
	}
	leavers[0].settle()
	if err := leavers[0].nsc[nsLeavers].Room("r").Leave(ctx); err != nil {
		t.Fatalf("room leave: %v", err)
	}
	if !got("room:" + leavers[0].id) {
		t.Fatal("a broadcast from OnRoomLeft never arrived")
	}
	leavers[1].settle()
	if err := leavers[1].nsc[nsLeavers].Disconnect(ctx); err != nil {
		t.Fatalf("namespace disconnect: %v", err)
	}
	if !got("ns:" + leavers[1].id) {
		t.Fatal("a broadcast from OnNamespaceDisconnect never arrived")
	}
	leavers[2].c.Close() // the server's Conn.Close fires both, forced
	if !got("ns:" + leavers[2].id) {
		t.Fatal("a broadcast from a forced OnNamespaceDisconnect never arrived")
	}
	// Closing a node whose clients are in rooms fires the handlers on every
	// connection, inside Server.Close; the rule's watchdog fails a hang.
	cl.dial("stays", 2, nsLeavers)
	cl.nodes[2].srv.Close()
}
