package nats_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/internal/neffostest"
	"github.com/neffos-contrib/scaleout/stackexchange/nats"
	"github.com/neffos-contrib/scaleout/stackexchange/stackexchangetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// neffos v0.0.24's server loop has no way to stop.
		goleak.IgnoreAnyFunction("github.com/kataras/neffos.(*Server).start"),
	)
}

// startNATS starts a real NATS server in-process on a random loopback port,
// with a monitoring port, and shuts it down at the end of the test.
func startNATS(t testing.TB, configure func(*server.Options)) (clientURL, monitorURL string) {
	t.Helper()
	opts := &server.Options{
		Host:     "127.0.0.1",
		Port:     server.RANDOM_PORT,
		HTTPHost: "127.0.0.1",
		HTTPPort: server.RANDOM_PORT,
		NoLog:    true,
		NoSigs:   true,
	}
	if configure != nil {
		configure(opts)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatal("nats server not ready in 10s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s.ClientURL(), "http://" + s.MonitorAddr().String()
}

// natsURL returns NATS_URL (and NATS_MONITOR_URL, which may be empty) when
// set, or an embedded server's addresses.
func natsURL(t testing.TB) (clientURL, monitorURL string) {
	t.Helper()
	if u := os.Getenv("NATS_URL"); u != "" {
		return u, os.Getenv("NATS_MONITOR_URL")
	}
	return startNATS(t, nil)
}

// uniquePrefix returns a subject prefix no other test uses, so tests share
// one NATS server.
func uniquePrefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:])
}

func newExchange(t testing.TB, url, monitor, prefix string) *nats.StackExchange {
	t.Helper()
	exc, err := nats.NewStackExchange(url)
	if err != nil {
		t.Fatalf("NewStackExchange: %v", err)
	}
	exc.SubjectPrefix = prefix
	exc.MonitorURL = monitor
	return exc
}

// node is a real neffos server with its exchange, on a loopback port.
type node struct {
	srv *neffos.Server
	exc *nats.StackExchange
	url string
}

func startNode(t testing.TB, exc *nats.StackExchange, handler neffos.ConnHandler) *node {
	t.Helper()
	srv := neffos.New(gorilla.DefaultUpgrader, handler)
	if err := srv.UseStackExchange(exc); err != nil {
		t.Fatalf("UseStackExchange: %v", err)
	}
	t.Cleanup(func() { // after Serve's cleanup stopped the HTTP server
		srv.Close()
		if err := exc.Close(); err != nil {
			t.Errorf("exchange Close: %v", err)
		}
	})
	return &node{srv: srv, exc: exc, url: neffostest.Serve(t, srv)}
}

// recorder keeps the bodies a client received.
type recorder struct {
	mu     sync.Mutex
	got    []string
	notify chan struct{}
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) add(body []byte) {
	r.mu.Lock()
	r.got = append(r.got, string(body))
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) count(body string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, b := range r.got {
		if b == body {
			n++
		}
	}
	return n
}

// wait waits until body arrived, at most d.
func (r *recorder) wait(body string, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for r.count(body) == 0 {
		select {
		case <-r.notify:
		case <-deadline.C:
			return r.count(body) > 0
		}
	}
	return true
}

// events records every non-system event's body.
func (r *recorder) events() neffos.Events {
	return neffos.Events{neffos.OnAnyEvent: func(_ *neffos.NSConn, m neffos.Message) error {
		if neffos.IsSystemEvent(m.Event) {
			return nil
		}
		if m.Event == "question" {
			return neffos.Reply(append([]byte("answer:"), m.Body...))
		}
		r.add(m.Body)
		return nil
	}}
}

// dial connects a real neffos Go client to n and to namespace ns. For the
// empty namespace the client is a native one (neffos connects it to "" by
// itself).
func dial(t testing.TB, n *node, ns string, r *recorder) *neffos.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ns == "" {
		// A native-only client sends no handshake: plain gorilla dialer.
		c, err := neffos.Dial(ctx, gorilla.DefaultDialer, n.url, neffos.Events{neffos.OnNativeMessage: func(_ *neffos.NSConn, m neffos.Message) error {
			r.add(m.Body)
			return nil
		}})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(c.Close)
		return c
	}
	c, err := neffostest.Dial(ctx, n.url, neffos.Namespaces{ns: r.events()})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(c.Close)
	if _, err := c.Connect(ctx, ns); err != nil { // settles first
		t.Fatalf("connect %q: %v", ns, err)
	}
	return c.Client
}

// serverNamespaces declares names on a server; "" is the native namespace.
func serverNamespaces(names ...string) neffos.Namespaces {
	nss := neffos.Namespaces{}
	for _, n := range names {
		if n == "" {
			nss[""] = neffos.Events{neffos.OnNativeMessage: func(*neffos.NSConn, neffos.Message) error { return nil }}
		} else {
			nss[n] = neffos.Events{}
		}
	}
	return nss
}

func message(ns, body string) neffos.Message {
	if ns == "" {
		return neffos.Message{Namespace: "", IsNative: true, Body: []byte(body)}
	}
	return neffos.Message{Namespace: ns, Event: "msg", Body: []byte(body)}
}

func TestNewStackExchangeClose(t *testing.T) {
	url, _ := natsURL(t)
	exc, err := nats.NewStackExchange(url)
	if err != nil {
		t.Fatal(err)
	}
	if exc.SubjectPrefix != "neffos" {
		t.Errorf("SubjectPrefix = %q, want the neffos default %q", exc.SubjectPrefix, "neffos")
	}
	if err := exc.Init(serverNamespaces("chat")); err != nil {
		t.Fatalf("Init: %v", err)
	}
	if err := exc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := exc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Never started: Close alone.
	exc, err = nats.NewStackExchange(url)
	if err != nil {
		t.Fatal(err)
	}
	if err := exc.Close(); err != nil {
		t.Fatalf("Close of an unstarted exchange: %v", err)
	}
}

func TestURLList(t *testing.T) {
	url, _ := natsURL(t)
	// An unreachable server first, spaces around the comma, as neffos
	// accepts: nats.go tries the next one.
	exc, err := nats.NewStackExchange("nats://127.0.0.1:1 , "+url, natsgo.DontRandomize(), natsgo.Timeout(time.Second))
	if err != nil {
		t.Fatalf("NewStackExchange with a URL list: %v", err)
	}
	if err := exc.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	done := make(chan error, 1)
	go func() {
		exc, err := nats.NewStackExchange("nats://"+addr, natsgo.Timeout(time.Second))
		if exc != nil {
			exc.Close()
			err = errors.New("got an exchange")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, scaleout.ErrBrokerUnavailable) {
			t.Fatalf("err = %v, want one wrapping scaleout.ErrBrokerUnavailable", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("NewStackExchange to an unreachable server did not return within its timeout")
	}
}

// TestConnNotClosed: an exchange on the user's connection leaves it open
// and usable, and removes only its own subscriptions.
func TestConnNotClosed(t *testing.T) {
	url, _ := natsURL(t)
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	mine, err := nc.SubscribeSync("user.subject")
	if err != nil {
		t.Fatal(err)
	}
	exc, err := nats.NewStackExchangeConn(nc, uniquePrefix(), scaleout.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := exc.Init(serverNamespaces("chat")); err != nil {
		t.Fatal(err)
	}
	if n := nc.NumSubscriptions(); n < 3 {
		t.Fatalf("%d subscriptions on the connection, want the user's plus the exchange's", n)
	}
	if err := exc.Close(); err != nil {
		t.Fatal(err)
	}
	if nc.IsClosed() {
		t.Fatal("Close closed the user's connection")
	}
	if n := nc.NumSubscriptions(); n != 1 {
		t.Errorf("%d subscriptions left on the user's connection, want only the user's one", n)
	}
	if err := nc.Publish("user.subject", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := mine.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("user's subscription after the exchange closed: %v", err)
	}
	if _, err := nats.NewStackExchangeConn(nil, "", scaleout.Options{}); !errors.Is(err, scaleout.ErrInvalidConfig) {
		t.Errorf("nil connection: err = %v, want scaleout.ErrInvalidConfig", err)
	}
	failing := func(*natsgo.Options) error { return errors.New("no such option") }
	if _, err := nats.NewStackExchange(url, failing); !errors.Is(err, scaleout.ErrInvalidConfig) {
		t.Errorf("failing nats.Option: err = %v, want scaleout.ErrInvalidConfig", err)
	}
}

func TestSubjectPrefixAfterStart(t *testing.T) {
	url, _ := natsURL(t)
	exc := newExchange(t, url, "", uniquePrefix())
	defer exc.Close()
	if err := exc.Init(serverNamespaces("chat")); err != nil {
		t.Fatal(err)
	}
	want := exc.SubjectPrefix + ".ns.chat"
	if got := nats.Engine(exc).ChannelOf("chat"); got != want {
		t.Errorf("ChannelOf = %q, want %q", got, want)
	}
	// Same prefix: a second server may use the exchange too.
	if err := exc.Init(serverNamespaces("chat")); err != nil {
		t.Errorf("second Init with the same prefix: %v", err)
	}
	exc.SubjectPrefix = "other"
	if err := exc.Init(serverNamespaces("chat")); !errors.Is(err, scaleout.ErrInvalidConfig) {
		t.Errorf("Init after a SubjectPrefix change on a started exchange: err = %v, want scaleout.ErrInvalidConfig", err)
	}
}

func TestMaxPayload(t *testing.T) {
	url, _ := startNATS(t, func(o *server.Options) { o.MaxPayload = 1024 })
	prefix := uniquePrefix()
	errs := make(chan error, 16)
	var nodes [2]*node
	var recs [2]*recorder
	var conns [2]*natsgo.Conn
	for i := range nodes {
		nc, err := natsgo.Connect(url, natsgo.NoEcho())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		conns[i] = nc
		var opts scaleout.Options
		if i == 0 {
			opts.ErrorHandler = func(err error) {
				select {
				case errs <- err:
				default:
				}
			}
		}
		exc, err := nats.NewStackExchangeConn(nc, prefix, opts)
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = startNode(t, exc, serverNamespaces("chat"))
		recs[i] = newRecorder()
		dial(t, nodes[i], "chat", recs[i])
	}

	// A broadcast is queued for the publish pipeline (Publish returns at
	// once); the refusal is reported below and never retried.
	big := strings.Repeat("B", 2000)
	nodes[0].exc.Publish([]neffos.Message{message("chat", big)})
	var got error
	deadline := time.After(10 * time.Second)
	for got == nil {
		select {
		case err := <-errs:
			if errors.Is(err, nats.ErrPayloadTooLarge) {
				got = err
			}
		case <-deadline:
			t.Fatal("ErrorHandler never got ErrPayloadTooLarge")
		}
	}
	if !errors.Is(got, scaleout.ErrPublish) || !errors.Is(got, scaleout.ErrRejected) {
		t.Errorf("reported error %v does not wrap scaleout.ErrPublish and scaleout.ErrRejected", got)
	}
	if !recs[0].wait(big, 10*time.Second) {
		t.Error("the publishing node's own client did not get the large message")
	}

	// Nothing else is disturbed: small messages still cross nodes.
	if !conns[0].IsConnected() {
		t.Fatal("connection lost after an oversized publish")
	}
	small := "small"
	if !nodes[0].exc.Publish([]neffos.Message{message("chat", small)}) {
		t.Fatal("Publish of a small message returned false")
	}
	nodes[0].srv.Broadcast(nil, message("chat", "small-2"))
	for _, body := range []string{small, "small-2"} {
		if !recs[1].wait(body, 10*time.Second) {
			t.Fatalf("the other node's client never got %q", body)
		}
	}
	if n := recs[1].count(big); n != 0 {
		t.Errorf("the other node's client got the oversized message %d times", n)
	}
}

// TestSubjectIsolation: names that could collide as NATS subjects (a
// separator, wildcards, white space, the empty native namespace, long
// names) never reach each other. One node declares every name of a group
// and publishes; every other node declares one name and has one client in
// it. After each broadcast a fence per name flushes the subjects (NATS keeps
// one publisher's order), then each node must have received exactly what
// was for it, counted both at its clients and at its exchange (so a
// subject-level leak shows even where neffos would filter the message).
func TestSubjectIsolation(t *testing.T) {
	url, _ := natsURL(t)
	long := strings.Repeat("x", 10*1024-1)
	groups := []struct {
		name  string
		names []string
	}{
		{"Separator", []string{"a.b", "a_b", "a_2eb"}},
		{"Wildcards", []string{"*", ">", "a"}},
		{"WhiteSpace", []string{"a b", "a\tb", "a\nb", "a_20b"}},
		{"EmptyNative", []string{"", "_"}},
		{"LongNames", []string{long + "a", long + "b"}},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			testIsolation(t, url, g.names)
		})
	}
}

func testIsolation(t *testing.T, url string, names []string) {
	prefix := uniquePrefix()
	pub := startNode(t, newExchange(t, url, "", prefix), serverNamespaces(names...))
	seen := map[string]string{}
	for _, n := range names {
		ch := nats.Engine(pub.exc).ChannelOf(n)
		if prev, dup := seen[ch]; dup {
			t.Fatalf("names %q and %q share channel %q", prev, n, ch)
		}
		seen[ch] = n
		if strings.ContainsAny(ch, " \t\r\n*>") {
			t.Fatalf("channel %q of %q is not a literal NATS subject", ch, n)
		}
	}
	obs := make([]*node, len(names))
	recs := make([]*recorder, len(names))
	for i, n := range names {
		obs[i] = startNode(t, newExchange(t, url, "", prefix), serverNamespaces(n))
		recs[i] = newRecorder()
		dial(t, obs[i], n, recs[i])
	}

	// Warm up: a native client is connected to "" by the server after Dial
	// returns; repeat a warm-up message until every client got one.
	warm := make([]bool, len(names))
	deadline := time.Now().Add(15 * time.Second)
	for round := 0; ; round++ {
		done := true
		for i, n := range names {
			if !warm[i] {
				if recs[i].count(fmt.Sprintf("warm-%d", i)) > 0 {
					warm[i] = true
					continue
				}
				done = false
				pub.srv.Broadcast(nil, message(n, fmt.Sprintf("warm-%d", i)))
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("clients never got the warm-up messages: %v", warm)
		}
		for i := range names {
			if !warm[i] {
				recs[i].wait(fmt.Sprintf("warm-%d", i), 50*time.Millisecond)
			}
		}
	}
	fence := func(tag string) {
		t.Helper()
		for j, n := range names {
			pub.srv.Broadcast(nil, message(n, fmt.Sprintf("fence-%s-%d", tag, j)))
		}
		for j := range names {
			if !recs[j].wait(fmt.Sprintf("fence-%s-%d", tag, j), 10*time.Second) {
				t.Fatalf("client of %q never got fence %s", names[j], tag)
			}
		}
	}
	fence("start")
	base := make([]uint64, len(names))
	for j := range obs {
		base[j] = obs[j].exc.Stats().Received
	}

	for target, tn := range names {
		hit := fmt.Sprintf("hit-%d", target)
		pub.srv.Broadcast(nil, message(tn, hit))
		fence(fmt.Sprint(target))
		for j, n := range names {
			want := 0
			if j == target {
				want = 1
			}
			if got := recs[j].count(hit); got != want {
				t.Errorf("broadcast to %q reached the client of %q %d times, want %d", tn, n, got, want)
			}
			recv := obs[j].exc.Stats().Received
			if delta := recv - base[j]; delta != uint64(1+want) {
				t.Errorf("broadcast to %q: node of %q read %d messages from NATS, want %d", tn, n, delta, 1+want)
			}
			base[j] = recv
		}
	}
}

// TestAsk: Server.Ask reaches a client on another node, and an Ask to a
// connection id no node holds fails fast with scaleout.ErrConnNotFound
// although NATS cannot count receivers of a plain publish.
func TestAsk(t *testing.T) {
	url, _ := natsURL(t)
	prefix := uniquePrefix()
	a := startNode(t, newExchange(t, url, "", prefix), serverNamespaces("chat"))
	b := startNode(t, newExchange(t, url, "", prefix), serverNamespaces("chat"))
	c := dial(t, b, "chat", newRecorder())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := a.srv.Ask(ctx, neffos.Message{Namespace: "chat", Event: "question", To: c.ID, Body: []byte("q")})
	if err != nil {
		t.Fatalf("Ask to a client on another node: %v", err)
	}
	if string(reply.Body) != "answer:q" {
		t.Errorf("reply body %q, want %q", reply.Body, "answer:q")
	}

	slow, cancel2 := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel2()
	done := make(chan error, 1)
	go func() {
		_, err := a.srv.Ask(slow, neffos.Message{Namespace: "chat", Event: "question", To: "nobody-has-this-id", Body: []byte("q")})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, scaleout.ErrConnNotFound) {
			t.Fatalf("Ask to a connection nobody holds: err = %v, want scaleout.ErrConnNotFound", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Ask to a connection nobody holds did not fail fast")
	}
}

func TestBrokerCounts(t *testing.T) {
	url, monitor := natsURL(t)
	if monitor == "" {
		t.Skip("NATS_URL set without NATS_MONITOR_URL: no monitoring endpoint to ask")
	}
	prefix := uniquePrefix()
	a := startNode(t, newExchange(t, url, monitor, prefix), serverNamespaces("chat"))
	b := startNode(t, newExchange(t, url, monitor, prefix), serverNamespaces("chat"))
	for i := 0; i < 5; i++ {
		dial(t, a, "chat", newRecorder())
		dial(t, b, "chat", newRecorder())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, n := range []*node{a, b} {
		conns, err := n.exc.BrokerConns(ctx)
		if err != nil {
			t.Fatalf("node %d BrokerConns: %v", i, err)
		}
		if conns != 1 {
			t.Errorf("node %d holds %d NATS connections for 5 clients, want 1", i, conns)
		}
	}
	subs, err := a.exc.NamespaceSubscribers(ctx, "chat")
	if err != nil {
		t.Fatal(err)
	}
	if subs != 2 {
		t.Errorf("namespace subject has %d subscribers, want one per node (2)", subs)
	}

	plain := newExchange(t, url, "", prefix)
	defer plain.Close()
	if err := plain.Init(serverNamespaces("chat")); err != nil {
		t.Fatal(err)
	}
	if _, err := plain.BrokerConns(ctx); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("BrokerConns without MonitorURL: err = %v, want errors.ErrUnsupported", err)
	}
}

// TestConnName: the user's connection name is kept, and BrokerConns of an
// exchange on a user's unnamed connection counts it by client id.
func TestConnName(t *testing.T) {
	url, monitor := natsURL(t)
	if monitor == "" {
		t.Skip("no monitoring endpoint")
	}
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	exc, err := nats.NewStackExchangeConn(nc, uniquePrefix(), scaleout.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer exc.Close()
	exc.MonitorURL = monitor
	if err := exc.Init(serverNamespaces("chat")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := exc.BrokerConns(ctx); err != nil || n != 1 {
		t.Errorf("BrokerConns = %d, %v; want 1", n, err)
	}
}

func TestConformance(t *testing.T) {
	url, monitor := natsURL(t)
	stackexchangetest.Run(t, factory(url, monitor))
}

// factory builds the suite's exchanges on the NATS server at url (or the
// comma-separated URL list), with the nats.go options.
func factory(url, monitor string, options ...natsgo.Option) stackexchangetest.Factory {
	return func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange {
		if reflect.ValueOf(opts).IsZero() {
			// The drop-in constructor, as users of neffos's exchange call it.
			exc, err := nats.NewStackExchange(url, options...)
			if err != nil {
				t.Fatalf("NewStackExchange: %v", err)
			}
			exc.SubjectPrefix = channel
			exc.MonitorURL = monitor
			return exc
		}
		exc, err := nats.NewStackExchangeOptions(url, opts, options...)
		if err != nil {
			t.Fatalf("NewStackExchangeOptions: %v", err)
		}
		exc.SubjectPrefix = channel
		exc.MonitorURL = monitor
		return exc
	}
}

// clusterFactory builds the suite's exchanges on a NATS cluster: each with
// the cluster's whole URL list, node i's starting with server i (modulo
// the cluster's size), with nats.DontRandomize, so node i is attached to
// server i and fails over to the next ones, and cross-node traffic crosses
// the cluster's routes. It relies on the suite calling a Factory once per
// node in node order, each group of nodes with a channel of its own: the
// calls are counted per channel. No monitor URL: one server's /connz and
// /subsz do not count a cluster (the suite logs the counts as
// unsupported). Each exchange's connection failures and reconnects go to
// ev when it is not nil.
func clusterFactory(c *brokertest.NATSCluster, ev *clusterConns) stackexchangetest.Factory {
	var mu sync.Mutex
	calls := map[string]int{} // channel -> nodes built
	return func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange {
		mu.Lock()
		node := calls[channel]
		calls[channel]++
		mu.Unlock()
		options := []natsgo.Option{natsgo.DontRandomize()}
		if ev != nil {
			options = append(options, ev.track(channel, node)...)
		}
		return factory(c.URLsFrom(node%len(c.Servers)), "", options...)(t, channel, opts)
	}
}

// clusterConns records, per exchange, the failures (disconnects with an
// error, not Close) and reconnects of its NATS connection.
type clusterConns struct {
	mu    sync.Mutex
	conns []*clusterConn // in factory call order
}

type clusterConn struct {
	channel       string
	node          int
	failures      int
	reconnectedTo []string
}

func (ev *clusterConns) track(channel string, node int) []natsgo.Option {
	cc := &clusterConn{channel: channel, node: node}
	ev.mu.Lock()
	ev.conns = append(ev.conns, cc)
	ev.mu.Unlock()
	return []natsgo.Option{
		natsgo.DisconnectErrHandler(func(_ *natsgo.Conn, err error) {
			if err != nil {
				ev.mu.Lock()
				cc.failures++
				ev.mu.Unlock()
			}
		}),
		natsgo.ReconnectHandler(func(nc *natsgo.Conn) {
			u := nc.ConnectedUrl()
			ev.mu.Lock()
			cc.reconnectedTo = append(cc.reconnectedTo, u)
			ev.mu.Unlock()
		}),
	}
}

// group returns the connections of the nodes built with channel, by node.
func (ev *clusterConns) group(channel string) []clusterConn {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	var out []clusterConn
	for _, cc := range ev.conns {
		if cc.channel == channel {
			out = append(out, *cc)
		}
	}
	return out
}

// TestConformanceCluster runs the conformance suite on a NATS cluster of
// three nats-server processes of the test's own, node i attached to
// server i.
// A failed run logs the exchanges' NATS connection failures.
func TestConformanceCluster(t *testing.T) {
	c := brokertest.NewNATSCluster(t, 3)
	ev := &clusterConns{}
	stackexchangetest.Run(t, clusterFactory(c, ev))
	if t.Failed() {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		for _, cc := range ev.conns {
			if cc.failures > 0 || len(cc.reconnectedTo) > 0 {
				t.Logf("channel %s node %d: %d NATS connection failures, reconnected to %v", cc.channel, cc.node, cc.failures, cc.reconnectedTo)
			}
		}
	}
}

// TestClusterFaults runs the conformance package's cluster fault rules on
// a NATS cluster of three nats-server processes of the test's own:
// Fault/Cluster/KillOneServer kills (SIGKILL) server 0, node 0's, under
// traffic and restarts it. It also checks the rule's premise: the kill
// failed node 0's connection over to server 1, and no other node's.
func TestClusterFaults(t *testing.T) {
	var c *brokertest.NATSCluster
	ev := &clusterConns{}
	stackexchangetest.RunClusterFaults(t, func(t *testing.T) ([]stackexchangetest.Process, stackexchangetest.Factory) {
		c = brokertest.NewNATSCluster(t, 3)
		ps := make([]stackexchangetest.Process, len(c.Servers))
		for i, s := range c.Servers {
			ps[i] = s
		}
		return ps, clusterFactory(c, ev)
	})
	if t.Failed() || c == nil {
		return
	}
	ev.mu.Lock()
	first := ev.conns[0].channel // the nodes that saw the kill
	ev.mu.Unlock()
	for _, cc := range ev.group(first) {
		t.Logf("node %d: %d connection failures, reconnected to %v", cc.node, cc.failures, cc.reconnectedTo)
		switch {
		case cc.node == 0 && (cc.failures != 1 || len(cc.reconnectedTo) != 1 || cc.reconnectedTo[0] != c.Servers[1].URL):
			t.Errorf("node 0: %d connection failures, reconnected to %v; want its server killed once and a reconnect to server 1 (%s)", cc.failures, cc.reconnectedTo, c.Servers[1].URL)
		case cc.node != 0 && (cc.failures != 0 || len(cc.reconnectedTo) != 0):
			t.Errorf("node %d: %d connection failures, reconnected to %v; want none: only node 0's server was killed", cc.node, cc.failures, cc.reconnectedTo)
		}
	}
}

// TestFaults runs the conformance package's broker-fault rules on a
// nats-server process of the test's own.
func TestFaults(t *testing.T) {
	stackexchangetest.RunFaults(t, func(t *testing.T) ([]stackexchangetest.Process, stackexchangetest.Factory) {
		n := brokertest.NewNATS(t, brokertest.NATSMonitor())
		return []stackexchangetest.Process{n}, factory(n.URL, n.MonitorURL)
	})
}

// TestDropIn is neffos's own stackexchange/nats usage, unchanged but for
// the import path: NewStackExchange with nats options, With, SubjectPrefix.
func TestDropIn(t *testing.T) {
	url, _ := natsURL(t)
	opts := natsgo.GetDefaultOptions()
	opts.Url = url
	opts.Name = "drop-in"
	exc, err := nats.NewStackExchange(url, nats.With(opts))
	if err != nil {
		t.Fatal(err)
	}
	exc.SubjectPrefix = "MyChatApp"
	stackexchangetest.UseAndClose(t, exc)
}
