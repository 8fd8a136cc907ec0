package nats_test

// A harness for the fault, hostile-input and auth tests: real neffos nodes
// and real neffos Go clients, with internal/neffostest's workarounds for
// neffos v0.0.24.

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout/internal/neffostest"
	"github.com/neffos-contrib/scaleout/internal/testkit"
	"github.com/neffos-contrib/scaleout/stackexchange/nats"
)

// hNode is a real neffos server with its exchange, served like the suite's
// nodes.
type hNode struct {
	srv *neffos.Server
	exc *nats.StackExchange
	url string
}

const hNS = "chat"

func startHNode(t testing.TB, exc *nats.StackExchange) *hNode {
	t.Helper()
	srv := neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{hNS: neffos.Events{}})
	if err := srv.UseStackExchange(exc); err != nil {
		t.Fatalf("UseStackExchange: %v", err)
	}
	t.Cleanup(func() {
		srv.Close()
		if err := exc.Close(); err != nil {
			t.Errorf("exchange Close: %v", err)
		}
	})
	url := neffostest.Serve(t, srv) // registered after: stops serving first
	return &hNode{srv: srv, exc: exc, url: url}
}

// broadcast sends body to every client of hNS, through Server.Broadcast,
// and returns how long neffos was blocked.
func (n *hNode) broadcast(body string) time.Duration {
	start := time.Now()
	n.srv.Broadcast(nil, neffos.Message{Namespace: hNS, Event: "msg", Body: []byte(body)})
	return time.Since(start)
}

// hClient is a real neffos Go client connected to hNS.
type hClient struct {
	c      *neffos.Client
	id     string
	sock   *neffostest.Socket
	mu     sync.Mutex
	got    map[string]int
	notify chan struct{}
}

func dialH(t testing.TB, n *hNode) *hClient {
	t.Helper()
	c, err := tryDialH(n)
	if err != nil {
		t.Fatalf("dial %s: %v", n.url, err)
	}
	t.Cleanup(c.c.Close)
	return c
}

func tryDialH(n *hNode) (*hClient, error) {
	hc := &hClient{got: map[string]int{}, notify: make(chan struct{}, 1)}
	handler := neffos.Namespaces{hNS: neffos.Events{neffos.OnAnyEvent: func(_ *neffos.NSConn, m neffos.Message) error {
		if neffos.IsSystemEvent(m.Event) {
			return nil
		}
		if m.Event == "question" {
			return neffos.Reply(append([]byte("answer:"), m.Body...))
		}
		hc.mu.Lock()
		hc.got[string(m.Body)]++
		hc.mu.Unlock()
		select {
		case hc.notify <- struct{}{}:
		default:
		}
		return nil
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialer := neffostest.Dialer(false, func(s *neffostest.Socket) { hc.sock = s })
	c, err := neffos.Dial(ctx, dialer, n.url, handler)
	if err != nil {
		return nil, err
	}
	hc.c, hc.id = c, c.ID
	hc.sock.Settle() // before asking
	if _, err := c.Connect(ctx, hNS); err != nil {
		c.Close()
		return nil, err
	}
	return hc, nil
}

func (c *hClient) count(body string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[body]
}

// wait waits until body arrived, at most d.
func (c *hClient) wait(body string, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for c.count(body) == 0 {
		select {
		case <-c.notify:
		case <-t.C:
			return c.count(body) > 0
		}
	}
	return true
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(d time.Duration, cond func() bool) bool { return testkit.Until(d, cond) }

// goroutinesAtMost waits until runtime.NumGoroutine() <= want, at most d,
// and returns the last count.
func goroutinesAtMost(want int, d time.Duration) int {
	n := runtime.NumGoroutine()
	waitUntil(d, func() bool { n = runtime.NumGoroutine(); return n <= want })
	return n
}

// resumed broadcasts fresh bodies from "from" until every client in to got
// one, at most d. It returns the body that arrived and how long it took.
func resumed(t testing.TB, tag string, from *hNode, d time.Duration, to ...*hClient) (time.Duration, bool) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	for i := 0; time.Now().Before(deadline); i++ {
		body := tag + "-" + strconv.Itoa(i)
		from.broadcast(body)
		all := true
		for _, c := range to {
			if !c.wait(body, 250*time.Millisecond) {
				all = false
				break
			}
		}
		if all {
			return time.Since(start), true
		}
	}
	return time.Since(start), false
}
