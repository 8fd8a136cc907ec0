package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/kataras/neffos"
)

// The chat's namespaces: each is its own set of channels on the broker, and
// a client connects to any of them.
var chatNamespaces = []string{"chat", "support"}

// Events. The page (web/src/app.js) and the Node.js test use the same names.
//
// From a client:
//
//	chat     body: text. To everyone in the namespace, or to msg.Room's
//	         members when sent to a room (Room.emit).
//	private  body: {"to": id, "text": ...}. To one client, on any node.
//	ask      body: {"to": id, "text": ...}. The server asks that client
//	         (Server.Ask, event "question") and sends the reply back to the
//	         asking client as "answer".
//	announce body: id. Tells the client id (event presence, state "here")
//	         that the sender is online: a newcomer learns who was there.
//	whoami   a client Ask; the reply is {"id", "node", "peers"}.
//
// To a client: chat, private, question, answer, presence, room; bodies are
// JSON objects with at least "from" (a connection id) and "node" (the node
// the sender is connected to). And kicked: a Server.Ask (body {"from":
// the admin's id, "node": the node the admin used, "to": the client's id})
// sent just before an admin disconnects the client (cluster.go); the page
// shows it and replies, so it is shown before the socket closes.
const (
	evChat     = "chat"
	evPrivate  = "private"
	evAsk      = "ask"
	evAnnounce = "announce"
	evWhoami   = "whoami"
	evQuestion = "question"
	evAnswer   = "answer"
	evPresence = "presence"
	evRoom     = "room"
	evKicked   = "kicked"
)

// askTimeout bounds a server Ask: a person answers on the page.
const askTimeout = 30 * time.Second

// maxText bounds a chat text, in bytes.
const maxText = 2000

// chat is the chat application of one node.
type chat struct {
	node   string
	server *neffos.Server // set before the node serves

	mu    sync.Mutex
	peers []peer

	bg     sync.WaitGroup // Asks in flight
	ctx    context.Context
	cancel context.CancelFunc
}

type peer struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// event is the body of every server-to-client message.
type event struct {
	From     string `json:"from"`
	Node     string `json:"node"`
	Text     string `json:"text,omitempty"`
	Room     string `json:"room,omitempty"`
	To       string `json:"to,omitempty"`
	State    string `json:"state,omitempty"`
	Question string `json:"question,omitempty"`
	Error    string `json:"error,omitempty"`
	Millis   int64  `json:"ms,omitempty"`
}

func newChat(node string) *chat {
	ctx, cancel := context.WithCancel(context.Background())
	return &chat{node: node, ctx: ctx, cancel: cancel}
}

func (ch *chat) setPeers(p []peer) {
	ch.mu.Lock()
	ch.peers = p
	ch.mu.Unlock()
}

// close cancels the Asks in flight and waits for them and for the deferred
// broadcasts.
func (ch *chat) close() {
	ch.cancel()
	ch.bg.Wait()
}

// connID names a connection "<name>@<node>" after the "name" query
// parameter, so that people can tell who is who and where; a random suffix
// keeps ids unique when a name is taken on this node. Ids are unique across
// nodes because node names are.
func (ch *chat) connID(_ http.ResponseWriter, r *http.Request) string {
	name := cleanName(r.URL.Query().Get("name"))
	if name == "" {
		name = "guest"
	}
	id := name + "@" + ch.node
	if ch.server != nil {
		if _, taken := ch.server.GetConnections()[id]; taken {
			id = name + "-" + randomHex(2) + "@" + ch.node
		}
	}
	return id
}

// cleanName keeps up to 24 letters, digits, '-', '_' and '.'.
func cleanName(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 24 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		}
	}
	return b.String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (ch *chat) namespaces() neffos.Namespaces {
	ns := neffos.Namespaces{}
	for _, name := range chatNamespaces {
		ns[name] = ch.events()
	}
	return ns
}

func (ch *chat) events() neffos.Events {
	return neffos.Events{
		neffos.OnNamespaceConnected: func(c *neffos.NSConn, msg neffos.Message) error {
			ch.broadcast(msg.Namespace, "", "", evPresence, event{From: c.Conn.ID(), Node: ch.node, State: "online"})
			return nil
		},
		neffos.OnNamespaceDisconnect: func(c *neffos.NSConn, msg neffos.Message) error {
			ch.broadcast(msg.Namespace, "", "", evPresence, event{From: c.Conn.ID(), Node: ch.node, State: "offline"})
			return nil
		},
		neffos.OnRoomJoined: func(c *neffos.NSConn, msg neffos.Message) error {
			ch.broadcast(msg.Namespace, msg.Room, "", evRoom, event{From: c.Conn.ID(), Node: ch.node, Room: msg.Room, State: "joined"})
			return nil
		},
		neffos.OnRoomLeft: func(c *neffos.NSConn, msg neffos.Message) error {
			ch.broadcast(msg.Namespace, msg.Room, "", evRoom, event{From: c.Conn.ID(), Node: ch.node, Room: msg.Room, State: "left"})
			return nil
		},
		evWhoami: func(c *neffos.NSConn, _ neffos.Message) error {
			ch.mu.Lock()
			peers := ch.peers
			ch.mu.Unlock()
			b, err := json.Marshal(struct {
				ID    string `json:"id"`
				Node  string `json:"node"`
				Peers []peer `json:"peers"`
			}{c.Conn.ID(), ch.node, peers})
			if err != nil {
				return err
			}
			return neffos.Reply(b)
		},
		// A chat message goes to everyone in the namespace, or in the room,
		// on every node, the sender included: its own copy confirms the
		// round trip. Client-side room checks are neffos's: a message to a
		// room the client has not joined is refused before it gets here.
		evChat: func(c *neffos.NSConn, msg neffos.Message) error {
			text, err := clip(string(msg.Body))
			if err != nil {
				return err
			}
			if msg.Room != "" && c.Room(msg.Room) == nil {
				return neffos.ErrBadRoom
			}
			ch.broadcast(msg.Namespace, msg.Room, "", evChat, event{From: c.Conn.ID(), Node: ch.node, Text: text, Room: msg.Room})
			return nil
		},
		// A private message goes to one connection id, on whichever node
		// holds it: msg.To.
		evPrivate: func(c *neffos.NSConn, msg neffos.Message) error {
			var req struct{ To, Text string }
			if err := json.Unmarshal(msg.Body, &req); err != nil || req.To == "" {
				return errors.New("private: want {\"to\": id, \"text\": ...}")
			}
			text, err := clip(req.Text)
			if err != nil {
				return err
			}
			ch.broadcast(msg.Namespace, "", req.To, evPrivate, event{From: c.Conn.ID(), Node: ch.node, Text: text, To: req.To})
			return nil
		},
		evAnnounce: func(c *neffos.NSConn, msg neffos.Message) error {
			if to := string(msg.Body); to != "" && to != c.Conn.ID() {
				ch.broadcast(msg.Namespace, "", to, evPresence, event{From: c.Conn.ID(), Node: ch.node, State: "here"})
			}
			return nil
		},
		// ask: this node asks the client req.To, on any node, with
		// Server.Ask, and sends its reply (or the error) to the asking
		// client as "answer". The wait runs in its own goroutine: an event
		// handler must not block the connection's read loop.
		evAsk: func(c *neffos.NSConn, msg neffos.Message) error {
			var req struct{ To, Text string }
			if err := json.Unmarshal(msg.Body, &req); err != nil || req.To == "" {
				return errors.New("ask: want {\"to\": id, \"text\": ...}")
			}
			text, err := clip(req.Text)
			if err != nil {
				return err
			}
			ch.bg.Add(1)
			go func() {
				defer ch.bg.Done()
				ch.ask(c, msg.Namespace, req.To, text)
			}()
			return nil
		},
	}
}

func (ch *chat) ask(c *neffos.NSConn, namespace, to, text string) {
	ctx, cancel := context.WithTimeout(ch.ctx, askTimeout)
	defer cancel()
	from := c.Conn.ID()
	q, _ := json.Marshal(event{From: from, Node: ch.node, Text: text})
	start := time.Now()
	reply, err := ch.server.Ask(ctx, neffos.Message{Namespace: namespace, Event: evQuestion, To: to, Body: q})
	ans := event{From: to, Node: ch.node, To: from, Question: text, Millis: time.Since(start).Milliseconds()}
	if err != nil {
		ans.Error = err.Error()
	} else {
		ans.Text = string(reply.Body)
	}
	b, _ := json.Marshal(ans)
	c.Emit(evAnswer, b) // false when the asking client left meanwhile
}

// broadcast sends ev to namespace (and room, or the one client to) on every
// node, through the exchange.
func (ch *chat) broadcast(namespace, room, to, name string, ev event) {
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	ch.server.Broadcast(nil, neffos.Message{Namespace: namespace, Room: room, To: to, Event: name, Body: b})
}

func clip(text string) (string, error) {
	if strings.TrimSpace(text) == "" {
		return "", errors.New("empty message")
	}
	if len(text) > maxText {
		return "", errors.New("message too long")
	}
	return text, nil
}
