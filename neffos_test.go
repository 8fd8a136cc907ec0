package scaleout

// One pinning test per neffos internal that neffos.go depends on. A neffos
// version that changes one of them fails the test named after it.

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout/internal/neffostest"
)

// capture is a neffos.StackExchange that records what neffos hands to
// Publish, to see the fields neffos sets on its way in.
type capture struct {
	mu   sync.Mutex
	msgs []neffos.Message
}

func (c *capture) OnConnect(*neffos.Conn) error { return nil }
func (c *capture) OnDisconnect(*neffos.Conn)    {}
func (c *capture) Publish(msgs []neffos.Message) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, msgs...)
	return true
}
func (c *capture) Subscribe(*neffos.Conn, string)   {}
func (c *capture) Unsubscribe(*neffos.Conn, string) {}
func (c *capture) Ask(context.Context, neffos.Message, string) (neffos.Message, error) {
	return neffos.Message{}, nil
}
func (c *capture) NotifyAsk(neffos.Message, string) error { return nil }

func (c *capture) last(t *testing.T) neffos.Message {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) == 0 {
		t.Fatal("neffos published nothing")
	}
	return c.msgs[len(c.msgs)-1]
}

// TestPinMessageFrom: Server.Broadcast(neffos.Exclude(id), m) puts id in
// the unexported field fromOf reads.
func TestPinMessageFrom(t *testing.T) {
	if fromField == nil {
		t.Fatal("neffos.Message has no string field \"from\": Exclude(id) cannot cross nodes")
	}
	srv := neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{"a": neffos.Events{}})
	defer srv.Close()
	capt := &capture{}
	if err := srv.UseStackExchange(capt); err != nil {
		t.Fatal(err)
	}
	srv.Broadcast(neffos.Exclude("some-id"), neffos.Message{Namespace: "a", Event: "e"})
	if got := fromOf(new(capt.last(t))); got != "some-id" {
		t.Errorf("fromOf = %q, want %q", got, "some-id")
	}
}

// serve starts a neffos server with handler (and the exchange exc, when
// not nil) and returns it with its URL and a channel of its server-side
// connections.
func serve(t *testing.T, handler neffos.ConnHandler, exc neffos.StackExchange) (*neffos.Server, string, chan *neffos.Conn) {
	t.Helper()
	srv := neffos.New(gorilla.DefaultUpgrader, handler)
	conns := make(chan *neffos.Conn, 16)
	srv.OnConnect = func(c *neffos.Conn) error { conns <- c; return nil }
	if exc != nil {
		if err := srv.UseStackExchange(exc); err != nil {
			t.Fatal(err)
		}
	}
	url := neffostest.Serve(t, srv)
	t.Cleanup(srv.Close)
	return srv, url, conns
}

func dial(t *testing.T, url string, handler neffos.ConnHandler) *neffostest.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := neffostest.Dial(ctx, url, handler)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestPinServerConnID: Server.Broadcast(conn, m) and Broadcast(nsConn, m)
// put the connection's server id in m.FromExplicit, Conn.Is matches it, and
// serverConnIDOf reads the same text.
func TestPinServerConnID(t *testing.T) {
	if serverConnIDField == nil {
		t.Fatal("neffos.Conn has no string field \"serverConnID\": Broadcast(conn) cannot be resolved")
	}
	capt := &capture{}
	srv, url, conns := serve(t, neffos.Namespaces{"a": neffos.Events{}}, capt)
	dial(t, url, neffos.Namespaces{"a": neffos.Events{}})
	c := <-conns
	sid := serverConnIDOf(c)
	if sid == "" || !c.Is(sid) {
		t.Fatalf("serverConnIDOf = %q; Conn.Is does not match it", sid)
	}
	if id, ok := idOfServerConnID(sid); !ok || id != c.ID() {
		t.Errorf("idOfServerConnID(%q) = %q, %v; want %q", sid, id, ok, c.ID())
	}
	srv.Broadcast(c, neffos.Message{Namespace: "a", Event: "e"})
	if got := capt.last(t).FromExplicit; got != sid {
		t.Errorf("Broadcast(conn): FromExplicit = %q, want %q", got, sid)
	}
}

// TestPinErrorText: neffos writes an error as its text and a
// neffos.Reply as its body.
func TestPinErrorText(t *testing.T) {
	if text, isErr := errorText(errors.New("bad; ünï")); text != "bad; ünï" || !isErr {
		t.Errorf("errorText(error) = %q, %v", text, isErr)
	}
	if text, isErr := errorText(neffos.Reply([]byte("body;x"))); text != "body;x" || isErr {
		t.Errorf("errorText(Reply) = %q, %v", text, isErr)
	}
}

var errPinKnown = errors.New("scaleout pin: a known error")

// TestPinKnownErrors: errorOf resolves neffos's own errors and those
// registered with neffos.RegisterKnownError, through neffos's deserializer.
func TestPinKnownErrors(t *testing.T) {
	neffos.RegisterKnownError(errPinKnown)
	for _, want := range []error{errPinKnown, neffos.ErrBadNamespace, neffos.ErrBadRoom, neffos.ErrWrite} {
		if got := errorOf(want.Error()); !errors.Is(got, want) {
			t.Errorf("errorOf(%q) = %v, not errors.Is the registered error", want.Error(), got)
		}
	}
	if got := errorOf("other; ünï"); got == nil || got.Error() != "other; ünï" {
		t.Errorf("errorOf(unknown) = %v", got)
	}
	if got := errorOf(""); got == nil {
		t.Error("errorOf(\"\") = nil, want an error")
	}
}

// TestPinEventHooks: the hooks installed in Init see every way neffos adds
// or removes a room, after neffos did it, and the user's handlers (or the
// OnAnyEvent fallback) still run. The native-only namespace is left alone.
func TestPinEventHooks(t *testing.T) {
	var mu sync.Mutex
	var userEvents []string
	record := func(_ *neffos.NSConn, m neffos.Message) error {
		mu.Lock()
		userEvents = append(userEvents, m.Event)
		mu.Unlock()
		return nil
	}
	exc := New(NewMemoryBroker().Broker(), "", Options{})
	defer exc.Close()
	events := neffos.Events{neffos.OnRoomJoined: record, neffos.OnAnyEvent: record}
	_, url, conns := serve(t, neffos.Namespaces{"a": events}, exc)
	if !exc.hub.hooked["a"] {
		t.Fatal("Init did not hook namespace a")
	}
	client := dial(t, url, neffos.Namespaces{"a": neffos.Events{}})
	c := <-conns
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nsc, err := client.Connect(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	inRoom := func(room string) bool {
		exc.hub.mu.RLock()
		defer exc.hub.mu.RUnlock()
		p := exc.hub.peers[c]
		x := exc.hub.nss["a"]
		if p == nil || x == nil {
			return false
		}
		_, indexed := x.rooms[room][p]
		_, own := p.rooms["a"][room]
		if indexed != own {
			t.Errorf("room %q: index and peer disagree (%v, %v)", room, indexed, own)
		}
		return indexed
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not seen by the hooks", what)
			}
			time.Sleep(time.Millisecond) // polling interval
		}
	}
	// The client joins and leaves (replyRoomJoin, replyRoomLeave).
	client.Settle()
	if _, err := nsc.JoinRoom(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	wait("client join", func() bool { return inRoom("r1") })
	client.Settle()
	if err := nsc.Room("r1").Leave(ctx); err != nil {
		t.Fatal(err)
	}
	wait("client leave", func() bool { return !inRoom("r1") })
	// The server joins it (askRoomJoin), then the namespace goes away with
	// the room in it (forceLeaveAll). neffos's server-side Ask reads the
	// socket itself while the reader is inside a handler; the hook saw the
	// leave from inside one, so wait for the reader to come out first.
	waitOutsideHandler(ctx, c)
	if _, err := c.Namespace("a").JoinRoom(ctx, "r2"); err != nil {
		t.Fatal(err)
	}
	wait("server join", func() bool { return inRoom("r2") })
	client.Settle()
	if err := nsc.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	wait("namespace disconnect", func() bool { return !inRoom("r2") })
	mu.Lock()
	got := append([]string(nil), userEvents...)
	mu.Unlock()
	for _, ev := range []string{neffos.OnNamespaceConnect, neffos.OnRoomJoined, neffos.OnRoomLeft} {
		found := false
		for _, g := range got {
			found = found || g == ev
		}
		if !found {
			t.Errorf("the user's handler (or OnAnyEvent) never saw %s; saw %v", ev, got)
		}
	}

	native := neffos.Events{neffos.OnNativeMessage: record}
	if installHooks("", native, exc.hub) || len(native) != 1 {
		t.Errorf("the native-only namespace was hooked: neffos would stop treating its connections as native")
	}
}

// TestPinInsideHandler: insideHandler reads neffos.Conn's reader state:
// false while the connection is idle, true while a handler of the server's
// runs for a frame the client sent.
func TestPinInsideHandler(t *testing.T) {
	if insideHandlerField == nil {
		t.Fatal("neffos.Conn has no field \"isInsideHandler\" (*uint32 or atomic.Uint32): remote JoinRoom/LeaveRoom cannot wait for the reader")
	}
	entered, release := make(chan struct{}), make(chan struct{})
	_, url, conns := serve(t, neffos.Namespaces{"a": neffos.Events{"block": func(*neffos.NSConn, neffos.Message) error {
		close(entered)
		<-release
		return nil
	}}}, nil)
	cl := dial(t, url, neffos.Namespaces{"a": neffos.Events{}})
	c := <-conns
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nsc, err := cl.Connect(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	waitOutsideHandler(ctx, c)
	if insideHandler(c) {
		t.Fatal("an idle connection reads as inside a handler")
	}
	nsc.Emit("block", nil)
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the handler never ran")
	}
	if !insideHandler(c) {
		t.Error("a connection whose handler runs reads as idle")
	}
	close(release)
	waitOutsideHandler(ctx, c)
	if insideHandler(c) || ctx.Err() != nil {
		t.Error("the connection still reads as inside a handler after it returned")
	}
}
