package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/url"
	"sync"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
)

// demoTimeout bounds the whole demo: dialing, connecting and waiting for
// every message to arrive.
const demoTimeout = 15 * time.Second

// demo dials one neffos Go client per node, lets each send one chat message
// and waits until every client got every message exactly once (its own
// included: the chat echoes to the sender). It returns the clients it
// dialed, for the caller to close.
func demo(ctx context.Context, nodes []*node) ([]*neffos.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()

	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = "client@" + n.name
	}
	t := newTally(names)

	var clients []*neffos.Client
	var conns []*neffos.NSConn
	for i, n := range nodes {
		name := names[i]
		u := n.wsURL + "?name=" + url.QueryEscape("demo-client")
		c, err := dial(ctx, name, u, neffos.Namespaces{
			chatNamespaces[0]: neffos.Events{
				evChat: func(_ *neffos.NSConn, msg neffos.Message) error {
					var ev event
					if err := json.Unmarshal(msg.Body, &ev); err != nil {
						return nil
					}
					fmt.Printf("%s got %q (sent via %s)\n", name, ev.Text, ev.Node)
					t.add(name, ev.Text)
					return nil
				},
			},
		})
		if err != nil {
			return clients, fmt.Errorf("%s: dial %s: %w", name, u, err)
		}
		clients = append(clients, c)
		ns, err := c.Connect(ctx, chatNamespaces[0])
		if err != nil {
			return clients, fmt.Errorf("%s: connect %q: %w", name, chatNamespaces[0], err)
		}
		conns = append(conns, ns)
	}

	// Every client is connected before anyone speaks, so no message can
	// miss a client that simply was not there yet.
	for i, ns := range conns {
		if !ns.Emit(evChat, []byte("hello from "+names[i])) {
			return clients, fmt.Errorf("%s: emit failed", names[i])
		}
	}

	if err := t.wait(ctx); err != nil {
		return clients, err
	}
	fmt.Printf("ok: each of %d clients on %d nodes got each of the %d messages exactly once\n",
		len(nodes), len(nodes), len(nodes))
	return clients, nil
}

// dialAttempt bounds one handshake; see dial.
const dialAttempt = 3 * time.Second

// dial is neffos.Dial bounded by ctx, retried when a handshake stalls.
//
// neffos's Dial honours ctx only while opening the websocket; it then waits
// for the server's ACK with no deadline. And v0.0.24's waiterOnce
// (waiter_once.go, fixed in v0.0.25) can lose a wake-up when unwait runs
// between wait's two checks, on either side of the handshake: Dial then
// waits forever (seen about once in 30 runs of this demo). A fresh
// connection is unlikely to hit the same race, so a stalled attempt is
// abandoned and retried instead of hanging the demo or CI.
func dial(ctx context.Context, name, url string, h neffos.ConnHandler) (*neffos.Client, error) {
	type result struct {
		c   *neffos.Client
		err error
	}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, dialAttempt)
		ch := make(chan result, 1)
		go func() {
			c, err := neffos.Dial(actx, gorilla.DefaultDialer, url, h)
			ch <- result{c, err}
		}()
		select {
		case r := <-ch:
			cancel()
			return r.c, r.err
		case <-actx.Done():
			cancel()
			// The stalled Dial returns once its node closes the
			// connection (at shutdown); close what it yields.
			go func() {
				if r := <-ch; r.c != nil {
					r.c.Close()
				}
			}()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			log.Printf("%s: handshake with %s stalled after %s (attempt %d), retrying", name, url, dialAttempt, attempt)
		}
	}
}

// tally records which messages each client received.
type tally struct {
	mu      sync.Mutex
	names   []string
	got     map[string]map[string]int // client -> text -> times received
	changed chan struct{}             // signalled (not closed) on every add
}

func newTally(names []string) *tally {
	t := &tally{names: names, got: make(map[string]map[string]int), changed: make(chan struct{}, 1)}
	for _, n := range names {
		t.got[n] = make(map[string]int)
	}
	return t
}

func (t *tally) add(client, text string) {
	t.mu.Lock()
	t.got[client][text]++
	t.mu.Unlock()
	select {
	case t.changed <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// problems lists what is still missing or wrong: a message not received or
// received more than once.
func (t *tally) problems() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, to := range t.names {
		for _, from := range t.names {
			text := "hello from " + from
			switch n := t.got[to][text]; {
			case n == 0:
				out = append(out, fmt.Sprintf("%s missed %q", to, text))
			case n > 1:
				out = append(out, fmt.Sprintf("%s got %q %d times", to, text, n))
			}
		}
	}
	return out
}

// wait returns nil once every client got every message, or an error listing
// what is missing when ctx ends first.
func (t *tally) wait(ctx context.Context) error {
	for {
		p := t.problems()
		if len(p) == 0 {
			return nil
		}
		select {
		case <-t.changed:
		case <-ctx.Done():
			return fmt.Errorf("demo: %w: %q", ctx.Err(), p)
		}
	}
}
