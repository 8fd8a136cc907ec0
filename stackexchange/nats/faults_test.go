package nats_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kataras/neffos"
	natsgo "github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/nats"
)

// publishTimeout is the engine's default Options.PublishTimeout, which
// NewStackExchange keeps.
const publishTimeout = 2 * time.Second

// callSlack is what a bounded call may take beyond its timeout on a loaded
// machine under -race: scheduling, not waiting.
const callSlack = 500 * time.Millisecond

// connEvents timestamps the NATS connection's disconnects and reconnects
// through the handlers a user would set (the exchange chains its own after
// them).
type connEvents struct {
	mu           sync.Mutex
	disconnected []time.Time
	reconnected  []time.Time
}

func (ev *connEvents) options() []natsgo.Option {
	return []natsgo.Option{
		natsgo.DisconnectErrHandler(func(_ *natsgo.Conn, err error) {
			ev.mu.Lock()
			ev.disconnected = append(ev.disconnected, time.Now())
			ev.mu.Unlock()
		}),
		natsgo.ReconnectHandler(func(*natsgo.Conn) {
			ev.mu.Lock()
			ev.reconnected = append(ev.reconnected, time.Now())
			ev.mu.Unlock()
		}),
	}
}

func (ev *connEvents) counts() (disc, rec int) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return len(ev.disconnected), len(ev.reconnected)
}

func (ev *connEvents) lastReconnect() time.Time {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.reconnected) == 0 {
		return time.Time{}
	}
	return ev.reconnected[len(ev.reconnected)-1]
}

// traffic publishes from two nodes while the broker fails: Exchange.Publish
// on a (the bool neffos gets) and Server.Broadcast on b (how long neffos is
// blocked), every few milliseconds, and records the worst times.
type traffic struct {
	stop chan struct{}
	done chan struct{}

	mu           sync.Mutex
	calls        int
	falses       int
	firstFalse   time.Time
	maxPublish   time.Duration // Exchange.Publish on node a
	maxBroadcast time.Duration // Server.Broadcast on node b
	maxFalse     time.Duration // the slowest Publish that returned false
	sent         atomic.Int64
}

func startTraffic(a, b *hNode, body int) *traffic {
	tr := &traffic{stop: make(chan struct{}), done: make(chan struct{})}
	payload := strings.Repeat("p", body)
	go func() {
		defer close(tr.done)
		tick := time.NewTicker(5 * time.Millisecond) // pacing, not synchronisation
		defer tick.Stop()
		for {
			select {
			case <-tr.stop:
				return
			case <-tick.C:
			}
			start := time.Now()
			ok := a.exc.Publish([]neffos.Message{{Namespace: hNS, Event: "traffic", Body: []byte(payload)}})
			dp := time.Since(start)
			db := b.broadcastEvent("traffic", payload)
			tr.sent.Add(2)
			tr.mu.Lock()
			tr.calls++
			tr.maxPublish = max(tr.maxPublish, dp)
			tr.maxBroadcast = max(tr.maxBroadcast, db)
			if !ok {
				tr.falses++
				tr.maxFalse = max(tr.maxFalse, dp)
				if tr.firstFalse.IsZero() {
					tr.firstFalse = time.Now()
				}
			}
			tr.mu.Unlock()
		}
	}()
	return tr
}

func (tr *traffic) halt() {
	close(tr.stop)
	<-tr.done
}

type trafficStats struct {
	calls, falses                      int
	firstFalse                         time.Time
	maxPublish, maxBroadcast, maxFalse time.Duration
}

func (tr *traffic) snapshot() trafficStats {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return trafficStats{tr.calls, tr.falses, tr.firstFalse, tr.maxPublish, tr.maxBroadcast, tr.maxFalse}
}

func (n *hNode) broadcastEvent(event, body string) time.Duration {
	start := time.Now()
	n.srv.Broadcast(nil, neffos.Message{Namespace: hNS, Event: event, Body: []byte(body)})
	return time.Since(start)
}

// timed runs f and returns how long it took.
func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// serverSubjects returns how many subscriptions the NATS server holds on
// subjects under prefix, from its /subsz monitoring endpoint.
func serverSubjects(t testing.TB, monitor, prefix string) int {
	t.Helper()
	return len(serverSubjectList(t, monitor, prefix))
}

// serverSubjectList returns the subject of every subscription the NATS
// server holds under prefix (a subject twice when two clients hold it).
func serverSubjectList(t testing.TB, monitor, prefix string) []string {
	t.Helper()
	var sz struct {
		List []struct {
			Subject string `json:"subject"`
		} `json:"subscriptions_list"`
	}
	monitorGet(t, monitor+"/subsz?subs=1&limit=100000", &sz)
	var subjects []string
	for _, s := range sz.List {
		if strings.HasPrefix(s.Subject, prefix+".") {
			subjects = append(subjects, s.Subject)
		}
	}
	return subjects
}

// totalConnections returns how many client connections the NATS server
// accepted since it started (/varz total_connections), failed ones
// included.
func totalConnections(t testing.TB, monitor string) int {
	t.Helper()
	var vz struct {
		Total int `json:"total_connections"`
	}
	monitorGet(t, monitor+"/varz", &vz)
	return vz.Total
}

func monitorGet(t testing.TB, url string, v any) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("monitoring %s: %v", url, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("monitoring %s: %v", url, err)
	}
}

type outage int

const (
	outageKill  outage = iota // SIGKILL, restart on the same port 3 s later
	outagePause               // SIGSTOP, SIGCONT 5 s later
)

// TestBrokerKilled kills NATS: the nats-server process is
// killed (SIGKILL) while both nodes publish, and restarted on the same port
// 3 s later.
func TestBrokerKilled(t *testing.T) { testOutage(t, outageKill, 1024) }

// TestBrokerPaused pauses NATS: the nats-server process is
// stopped (SIGSTOP) for 5 s while both nodes publish, then continued.
func TestBrokerPaused(t *testing.T) { testOutage(t, outagePause, 1024) }

func testOutage(t *testing.T, mode outage, body int) {
	broker := brokertest.NewNATS(t, brokertest.NATSMonitor())
	prefix := uniquePrefix()
	var evA, evB connEvents
	newExc := func(ev *connEvents) *nats.StackExchange {
		// The drop-in constructor with nats.go's defaults: ReconnectWait
		// 2s (+ up to 100ms jitter), MaxReconnects forced to -1 (forever)
		// by NewStackExchange, Timeout 2s.
		exc, err := nats.NewStackExchange(broker.URL, ev.options()...)
		if err != nil {
			t.Fatalf("NewStackExchange: %v", err)
		}
		exc.SubjectPrefix = prefix
		exc.MonitorURL = broker.MonitorURL
		return exc
	}
	a := startHNode(t, newExc(&evA))
	b := startHNode(t, newExc(&evB))
	a1, b1 := dialH(t, a), dialH(t, b)
	if d, ok := resumed(t, "warm-ab", a, 10*time.Second, a1, b1); !ok {
		t.Fatalf("no cross-node delivery before the outage (%v)", d)
	}
	if d, ok := resumed(t, "warm-ba", b, 10*time.Second, a1, b1); !ok {
		t.Fatalf("no cross-node delivery before the outage (%v)", d)
	}
	// Messages To a client of the other node are NATS requests (see
	// broker.PublishCounted); nats.go starts its one response-mux
	// subscription goroutine on a connection's first request, so take it
	// before the baseline.
	for _, p := range []struct {
		from *hNode
		to   *hClient
	}{{a, b1}, {b, a1}} {
		body := "warm-to-" + p.to.id
		if !p.from.exc.Publish([]neffos.Message{{Namespace: hNS, Event: "msg", To: p.to.id, Body: []byte(body)}}) || !p.to.wait(body, 10*time.Second) {
			t.Fatal("no cross-node message To a client before the outage")
		}
	}
	subsBefore := serverSubjects(t, broker.MonitorURL, prefix)
	g0 := runtime.NumGoroutine()
	statsA0, statsB0 := a.exc.Stats(), b.exc.Stats()

	tr := startTraffic(a, b, body)
	// Mid-traffic: fail the broker once traffic flows.
	if !waitUntil(10*time.Second, func() bool { return tr.sent.Load() >= 20 }) {
		t.Fatal("traffic did not start")
	}
	pid := broker.PID()
	outageStart := time.Now()
	var outageLen time.Duration
	switch mode {
	case outageKill:
		_ = broker.Kill()
		outageLen = 3 * time.Second
		t.Logf("nats-server pid %d killed (SIGKILL) with %d publishes done", pid, tr.sent.Load())
	case outagePause:
		if err := broker.Pause(); err != nil {
			t.Fatal(err)
		}
		outageLen = 5 * time.Second
		t.Logf("nats-server pid %d stopped (SIGSTOP) with %d publishes done", pid, tr.sent.Load())
	}

	if mode == outageKill {
		// Publish returns false once the node knows the broker is down: a
		// failed publish is retried for PublishTimeout first.
		if !waitUntil(outageLen+publishTimeout, func() bool { return tr.snapshot().falses > 0 }) {
			t.Errorf("no Publish returned false during the outage")
		} else {
			t.Logf("first Publish false %v after the kill", tr.snapshot().firstFalse.Sub(outageStart).Round(time.Millisecond))
		}
	}

	// The node's own clients keep getting its broadcasts.
	var localA, localB time.Duration
	localA = timed(func() {
		a.broadcast("local-a-1")
		if !a1.wait("local-a-1", 5*time.Second) {
			t.Error("during the outage, a client did not get its own node's broadcast")
		}
	})
	localB = timed(func() {
		b.broadcast("local-b-1")
		if !b1.wait("local-b-1", 5*time.Second) {
			t.Error("during the outage, a client did not get its own node's broadcast")
		}
	})
	// New websocket connections are accepted and served locally.
	var a2, b2 *hClient
	dialA := timed(func() {
		var err error
		if a2, err = tryDialH(a); err != nil {
			t.Fatalf("during the outage, a new websocket connection failed: %v", err)
		}
	})
	dialB := timed(func() {
		var err error
		if b2, err = tryDialH(b); err != nil {
			t.Fatalf("during the outage, a new websocket connection failed: %v", err)
		}
	})
	a.broadcast("local-a-2")
	b.broadcast("local-b-2")
	for _, c := range []struct {
		c    *hClient
		body string
	}{{a1, "local-a-2"}, {a2, "local-a-2"}, {b1, "local-b-2"}, {b2, "local-b-2"}} {
		if !c.c.wait(c.body, 5*time.Second) {
			t.Errorf("during the outage, %s did not reach a client of its node", c.body)
		}
	}
	// A message To a client of the same node is served locally; one To a
	// client of the other node is bounded like any publish.
	var toLocalOK, toRemoteOK bool
	toRemote := timed(func() {
		toRemoteOK = a.exc.Publish([]neffos.Message{{Namespace: hNS, Event: "msg", To: b1.id, Body: []byte("to-b1-outage")}})
	})
	toLocal := timed(func() {
		toLocalOK = a.exc.Publish([]neffos.Message{{Namespace: hNS, Event: "msg", To: a2.id, Body: []byte("to-a2-outage")}})
	})
	if !a2.wait("to-a2-outage", 5*time.Second) {
		t.Error("during the outage, a message To a client of the same node was not delivered")
	}
	t.Logf("during the outage: own broadcast reached a1 in %v, b1 in %v; new connections dialed in %v / %v; "+
		"Publish To remote = %v in %v, To local = %v in %v",
		localA.Round(time.Millisecond), localB.Round(time.Millisecond), dialA.Round(time.Millisecond), dialB.Round(time.Millisecond),
		toRemoteOK, toRemote.Round(time.Millisecond), toLocalOK, toLocal.Round(time.Millisecond))
	if mode == outageKill && toRemoteOK {
		t.Error("Publish To a client of another node returned true while the broker was down")
	}
	for _, d := range []time.Duration{toRemote, toLocal} {
		if d > publishTimeout+callSlack {
			t.Errorf("Publish blocked %v during the outage, PublishTimeout is %v", d, publishTimeout)
		}
	}

	// The outage lasts its scenario time, then the broker comes back.
	remaining := time.Until(outageStart.Add(outageLen))
	if remaining > 0 {
		<-time.After(remaining) // the scenario's outage duration, not synchronisation
	}
	during := tr.snapshot()
	back := time.Now()
	switch mode {
	case outageKill:
		if err := broker.Restart(); err != nil {
			t.Fatalf("restart nats-server: %v", err)
		}
		t.Logf("nats-server restarted on port %d as pid %d, %v after the kill", broker.Port, broker.PID(), back.Sub(outageStart).Round(time.Millisecond))
	case outagePause:
		if err := broker.Resume(); err != nil {
			t.Fatal(err)
		}
		t.Logf("nats-server continued (SIGCONT) %v after SIGSTOP", back.Sub(outageStart).Round(time.Millisecond))
	}

	// Cross-node delivery resumes by itself, to the clients from before the
	// outage and to those that connected during it.
	dAB, okAB := resumed(t, "resume-ab", a, 20*time.Second, b1, b2)
	dBA, okBA := resumed(t, "resume-ba", b, 20*time.Second, a1, a2)
	if !okAB || !okBA {
		t.Fatalf("cross-node delivery did not resume within 20s of the broker's return (a->b %v, b->a %v)", okAB, okBA)
	}
	discA, recA := evA.counts()
	discB, recB := evB.counts()
	t.Logf("after the broker's return: cross-node delivery a->b in %v, b->a in %v; NATS reconnects a %d (disconnects %d), b %d (disconnects %d)",
		dAB.Round(time.Millisecond), dBA.Round(time.Millisecond), recA, discA, recB, discB)
	if last := evA.lastReconnect(); !last.IsZero() {
		t.Logf("node a's last reconnect %v after the broker's return", last.Sub(back).Round(time.Millisecond))
	}
	if mode == outageKill && (recA == 0 || recB == 0) {
		t.Errorf("nats.go reconnected a %d times, b %d times; want at least once each", recA, recB)
	}

	// Every channel is subscribed again on the server: the namespace, both
	// node channels and one per connected client id, as the engines count.
	var subsAfter, want int
	if !waitUntil(10*time.Second, func() bool {
		want = a.exc.Stats().Subscriptions + b.exc.Stats().Subscriptions
		subsAfter = serverSubjects(t, broker.MonitorURL, prefix)
		return subsAfter == want
	}) {
		t.Errorf("the NATS server holds %d subscriptions under the prefix, the nodes hold %d", subsAfter, want)
	}
	t.Logf("server subscriptions under the prefix: %d before the outage (2 clients), %d after (4 clients), engines count %d", subsBefore, subsAfter, want)

	// Per-client channels taken during the outage work across nodes: a
	// message To a2 from b, and an Ask from b to a2.
	if !b.exc.Publish([]neffos.Message{{Namespace: hNS, Event: "msg", To: a2.id, Body: []byte("to-a2-after")}}) {
		t.Error("Publish To a client of another node returned false after recovery")
	}
	if !a2.wait("to-a2-after", 10*time.Second) {
		t.Error("a message To a client connected during the outage did not cross nodes after recovery")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	reply, err := b.srv.Ask(ctx, neffos.Message{Namespace: hNS, Event: "question", To: a2.id, Body: []byte("q")})
	cancel()
	if err != nil || string(reply.Body) != "answer:q" {
		t.Errorf("Ask across nodes after recovery: %q, %v", reply.Body, err)
	}

	tr.halt()
	all := tr.snapshot()
	statsA, statsB := a.exc.Stats(), b.exc.Stats()
	t.Logf("traffic: %d rounds (%d during the outage), Publish false %d times; slowest Exchange.Publish %v (slowest false %v), slowest Server.Broadcast %v",
		all.calls, during.calls, all.falses, all.maxPublish.Round(time.Millisecond), all.maxFalse.Round(time.Millisecond), all.maxBroadcast.Round(time.Millisecond))
	t.Logf("stats a: published +%d, publish errors +%d, received +%d; b: published +%d, publish errors +%d, received +%d",
		statsA.Published-statsA0.Published, statsA.PublishErrors-statsA0.PublishErrors, statsA.Received-statsA0.Received,
		statsB.Published-statsB0.Published, statsB.PublishErrors-statsB0.PublishErrors, statsB.Received-statsB0.Received)
	if all.maxPublish > publishTimeout+callSlack || all.maxBroadcast > publishTimeout+callSlack {
		t.Errorf("a call blocked past PublishTimeout %v: Exchange.Publish %v, Server.Broadcast %v", publishTimeout, all.maxPublish, all.maxBroadcast)
	}
	if mode == outageKill && statsA.PublishErrors == statsA0.PublishErrors {
		t.Error("no publish error counted during the outage")
	}

	// Goroutines return to their level before the outage once the clients
	// that connected during it are gone.
	a2.c.Close()
	b2.c.Close()
	g1 := goroutinesAtMost(g0, 10*time.Second)
	t.Logf("goroutines: %d before the outage, %d after recovery (outage clients closed)", g0, g1)
	if g1 > g0 {
		t.Errorf("goroutines: %d before the outage, %d after recovery", g0, g1)
	}
}

// TestBrokerNeverReachable starts with NATS unreachable: NewStackExchange
// against a port nobody listens on, and against a nats-server that accepts
// TCP but never answers (stopped with SIGSTOP before the exchange dials),
// returns an error wrapping scaleout.ErrBrokerUnavailable within nats.go's
// connect Timeout and leaves no goroutine.
func TestBrokerNeverReachable(t *testing.T) {
	t.Run("Refused", func(t *testing.T) {
		port, err := brokertest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		testUnreachable(t, "nats://127.0.0.1:"+strconv.Itoa(port), natsgo.DefaultTimeout)
	})
	t.Run("Silent", func(t *testing.T) {
		broker := brokertest.NewNATS(t)
		if err := broker.Pause(); err != nil {
			t.Fatal(err)
		}
		testUnreachable(t, broker.URL, natsgo.DefaultTimeout)
		if err := broker.Resume(); err != nil {
			t.Fatal(err)
		}
	})
}

func testUnreachable(t *testing.T, url string, timeout time.Duration) {
	g0 := runtime.NumGoroutine()
	start := time.Now()
	exc, err := nats.NewStackExchange(url)
	took := time.Since(start)
	if exc != nil {
		exc.Close()
		t.Fatal("NewStackExchange returned an exchange for an unreachable server")
	}
	if !errors.Is(err, scaleout.ErrBrokerUnavailable) {
		t.Fatalf("err = %v, want one wrapping scaleout.ErrBrokerUnavailable", err)
	}
	if took > timeout+callSlack {
		t.Errorf("NewStackExchange took %v, connect Timeout is %v", took, timeout)
	}
	g1 := goroutinesAtMost(g0, 5*time.Second)
	t.Logf("NewStackExchange(%s) failed in %v: %v; goroutines %d before, %d after", url, took.Round(time.Millisecond), err, g0, g1)
	if g1 > g0 {
		t.Errorf("goroutines: %d before NewStackExchange, %d after it failed", g0, g1)
	}
}

// TestBrokerPausedUnderLoad is case 2 with 16 KB messages at ~6 MB/s, so
// the paused server's socket buffers fill and nats.go's writes block: with
// nats.go's default FlusherTimeout (1m) Publish, and neffos's Broadcast,
// blocked for a minute here.
func TestBrokerPausedUnderLoad(t *testing.T) { testOutage(t, outagePause, 16*1024) }
