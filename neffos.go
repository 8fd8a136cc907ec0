package scaleout

// Everything in this file depends on neffos internals: unexported fields
// read by reflection, the text frame format, the wait-token markers, and
// the order in which neffos fires its namespace and room events. Each
// dependency has one pinning test in neffos_test.go, so a neffos version
// that changes one fails that named test instead of misbehaving.

import (
	"context"
	"encoding/hex"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kataras/neffos"
)

// stringField returns the index of T's unexported string field name, or nil
// when this neffos version has no such field.
func stringField(t reflect.Type, name string) []int {
	f, ok := t.FieldByName(name)
	if !ok || f.Type.Kind() != reflect.String {
		return nil
	}
	return f.Index
}

// fromField locates neffos.Message's "from": Server.Broadcast(
// neffos.Exclude(id), m) records the excluded id there, and
// Message.Serialize drops it. Pinned by TestPinMessageFrom.
var fromField = stringField(reflect.TypeOf(neffos.Message{}), "from")

// fromOf returns the connection id m must not be delivered to, set by
// Server.Broadcast(neffos.Exclude(id), m), or "".
func fromOf(m *neffos.Message) string {
	if fromField == nil {
		return ""
	}
	return reflect.ValueOf(m).Elem().FieldByIndex(fromField).String()
}

// serverConnIDField locates neffos.Conn's "serverConnID": the text that
// Server.Broadcast(conn or nsConn, m) puts in m.FromExplicit and that
// Conn.Is compares. Pinned by TestPinServerConnID.
var serverConnIDField = stringField(reflect.TypeOf(neffos.Conn{}), "serverConnID")

// serverConnIDOf returns c's server connection id, or "" when this neffos
// version has no such field. It is set before the server's OnConnect and
// never changes, so the engine reads it once, in OnConnect.
func serverConnIDOf(c *neffos.Conn) string {
	if serverConnIDField == nil {
		return ""
	}
	return reflect.ValueOf(c).Elem().FieldByIndex(serverConnIDField).String()
}

// idOfServerConnID returns the connection id inside a server connection
// id, "neffos(0x<server uuid>(<id><%p of the conn>))", for a
// Broadcast(conn) whose conn belongs to another server: the engine then
// excludes that id. Pinned by TestPinServerConnID.
func idOfServerConnID(sid string) (string, bool) {
	const head, tail = "neffos(0x", "))"
	if !strings.HasPrefix(sid, head) || !strings.HasSuffix(sid, tail) {
		return "", false
	}
	s := sid[len(head) : len(sid)-len(tail)]
	i := strings.IndexByte(s, '(')
	j := strings.LastIndex(s, "0x")
	if i < 0 || j <= i {
		return "", false
	}
	return s[i+1 : j], true
}

// Ask tokens. neffos keeps a server Ask's wait token in an unexported field
// and strips one '!' marker from its second byte at each of up to three
// places on the way (the node deserializing the question, a v0.0.24 client,
// the node deserializing the reply); the reply reaches NotifyAsk only if one
// marker is left. The question therefore carries three markers, and the
// token names the asking node and its ask id: "S!!!<node>-<id base36>".
// neffos's own tokens never start with 'S'. Pinned by TestAskToken and,
// against real clients of both neffos versions, by the conformance suite's
// Ask rules.

const askMarkers = "!!!"

func askToken(node string, id uint64) string {
	return "S" + askMarkers + node + "-" + strconv.FormatUint(id, 36)
}

func parseAskToken(token string) (node string, id uint64, ok bool) {
	if len(token) < 2 || token[0] != 'S' {
		return "", 0, false
	}
	rest := strings.TrimLeft(token[1:], "!")
	node, ids, found := strings.Cut(rest, "-")
	if !found || len(node) != 16 {
		return "", 0, false
	}
	if _, err := hex.DecodeString(node); err != nil {
		return "", 0, false
	}
	id, err := strconv.ParseUint(ids, 36, 64)
	if err != nil {
		return "", 0, false
	}
	return node, id, true
}

// questionOf builds the message a client receives for an Ask: env's fields
// with the wait token set. The token is set through neffos's own
// deserializer (the field is unexported), from a frame that carries only the
// token; the other fields are assigned directly, so no escaping is involved.
func questionOf(env *envelope, token string) *neffos.Message {
	m := neffos.DeserializeMessage(neffos.TextMessage, []byte(token+";;;;0;0;"), false, false)
	q := messageOf(env)
	m.Namespace, m.Room, m.Event, m.Body, m.Err, m.SetBinary = q.Namespace, q.Room, q.Event, q.Body, q.Err, q.SetBinary
	m.To = q.To
	m.FromStackExchange = true
	return &m
}

// errorText returns what neffos would write for err: the error's text, or
// the body of a neffos.Reply (isErr false). Pinned by TestPinErrorText.
func errorText(err error) (string, bool) {
	frame := neffos.Message{Event: "x", Err: err}.Serialize()
	// wait;ns;room;event;isError;isNoOp;body
	parts := strings.SplitN(string(frame), ";", 7)
	if len(parts) != 7 {
		return err.Error(), true
	}
	return parts[6], parts[4] == "1"
}

// errorOf turns an error text that crossed the broker back into the error a
// client on this node would see: neffos's own errors and every error
// registered with neffos.RegisterKnownError resolve to themselves (so
// errors.Is works), anything else is errors.New(text). It goes through
// neffos's deserializer, which holds the registry. Pinned by
// TestPinKnownErrors.
func errorOf(text string) error {
	m := neffos.DeserializeMessage(neffos.TextMessage, []byte(";;;x;1;0;"+text), false, false)
	if m.Err == nil {
		// An empty text: neffos would not mark it an error at all.
		return errEmpty
	}
	return m.Err
}

// errEmpty stands for an error whose text is empty.
var errEmpty = emptyError{}

type emptyError struct{}

func (emptyError) Error() string { return "" }

// Event hooks. The engine keeps its own index of which local connection is
// in which namespace and room, so fan-out never asks neffos (a connection's
// lock may be held by the handler that is broadcasting). neffos tells the
// exchange about namespaces (Subscribe/Unsubscribe) but not about rooms, and
// it tells it about a namespace only after the connect reply was written.
// The engine learns the rest by wrapping three handlers of every namespace
// it is given in Init, in the user's own Events maps:
//
//   - OnNamespaceConnect: after the user's handler accepted (nil error), the
//     connection is "joining": neffos registers the namespace and writes the
//     reply next, and messages for it are held until Subscribe.
//   - OnRoomJoined: neffos fires it after the room is registered.
//   - OnRoomLeft: neffos fires it after the room is removed (client leave,
//     server LeaveRoom, namespace disconnect, close).
//
// The index is updated first, then the user's handler runs (or, as neffos
// would do when the user set none, the OnAnyEvent handler). Pinned by
// TestPinEventHooks.

// hookTarget is what the hooks report to.
type hookTarget interface {
	joining(c *neffos.Conn, namespace string)
	joinRoom(c *neffos.Conn, namespace, room string)
	leaveRoom(c *neffos.Conn, namespace, room string)
}

// installHooks wraps the three handlers of events. It reports false when
// it leaves events alone: a nil map (nothing can be added), or the
// native-only namespace ("" with OnNativeMessage as its only event: neffos
// counts the events to decide that connections skip the namespace
// protocol, and they have no rooms). The engine then falls back to
// filtering in neffos's own Conn.Write. Called from Init, before the server
// serves: the maps are the server's, read by neffos without a lock.
func installHooks(ns string, events neffos.Events, t hookTarget) bool {
	if events == nil || (ns == "" && len(events) == 1 && events[neffos.OnNativeMessage] != nil) {
		return false
	}
	connect := events[neffos.OnNamespaceConnect]
	events[neffos.OnNamespaceConnect] = func(c *neffos.NSConn, m neffos.Message) error {
		if err := callUser(events, connect, c, m); err != nil {
			return err
		}
		t.joining(c.Conn, m.Namespace)
		return nil
	}
	joined := events[neffos.OnRoomJoined]
	events[neffos.OnRoomJoined] = func(c *neffos.NSConn, m neffos.Message) error {
		t.joinRoom(c.Conn, m.Namespace, m.Room)
		return callUser(events, joined, c, m)
	}
	left := events[neffos.OnRoomLeft]
	events[neffos.OnRoomLeft] = func(c *neffos.NSConn, m neffos.Message) error {
		t.leaveRoom(c.Conn, m.Namespace, m.Room)
		return callUser(events, left, c, m)
	}
	return true
}

// callUser runs the handler the user set for an event, or the OnAnyEvent
// handler when there was none, as neffos's Events.fireEvent would.
func callUser(events neffos.Events, h neffos.MessageHandlerFunc, c *neffos.NSConn, m neffos.Message) error {
	if h == nil {
		h = events[neffos.OnAnyEvent]
	}
	if h == nil {
		return nil
	}
	return h(c, m)
}

// insideHandlerField locates neffos.Conn's "isInsideHandler": 1 while the
// connection's reader runs a handler for a frame it read (a *uint32 in
// v0.0.24, an atomic.Uint32 in v0.0.25). In v0.0.24 a Conn.Ask called from
// another goroutine at that moment reads the next frame itself, racing
// with the reader, and its reply can go to the wrong reader (v0.0.25 hands
// the read over safely). Server-side JoinRoom and Room.Leave go through
// Conn.Ask. Pinned by TestPinInsideHandler.
var insideHandlerField, insideHandlerAtomic = func() ([]int, bool) {
	f, ok := reflect.TypeOf(neffos.Conn{}).FieldByName("isInsideHandler")
	switch {
	case !ok:
		return nil, false
	case f.Type == reflect.TypeOf((*uint32)(nil)):
		return f.Index, false
	case f.Type == reflect.TypeOf(atomic.Uint32{}):
		return f.Index, true
	}
	return nil, false
}()

// insideHandler reports whether c's reader is running a handler now.
func insideHandler(c *neffos.Conn) bool {
	if insideHandlerField == nil {
		return false
	}
	v := reflect.ValueOf(c).Elem().FieldByIndex(insideHandlerField)
	if insideHandlerAtomic {
		return (*atomic.Uint32)(v.Addr().UnsafePointer()).Load() == 1
	}
	if v.IsNil() {
		return false
	}
	return atomic.LoadUint32((*uint32)(v.UnsafePointer())) == 1
}

// waitOutsideHandler waits, polling every millisecond, until c's reader is
// not inside a handler or ctx is done, so that a Conn.Ask from this
// goroutine waits for its reply the regular way. A frame the client sends
// between the check and the Ask can still race (a neffos limitation).
func waitOutsideHandler(ctx context.Context, c *neffos.Conn) {
	for insideHandler(c) {
		t := time.NewTimer(time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
