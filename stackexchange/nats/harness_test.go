package nats_test

// A harness for the fault, hostile-input and auth tests: real neffos nodes
// and real neffos Go clients, with the two neffos v0.0.24 workarounds of
// stackexchangetest (copied here, the suite keeps them unexported): the
// server serves through srv.Upgrade with a socket that hands neffos the
// client's handshake ack only after Upgrade returned, clients dial with a
// socket whose first write waits for the server's answer to be handled,
// and a client settles before it asks (Connect).

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout/stackexchange/nats"
)

// ackSafeSocket: see stackexchangetest's dialer.go (lost wake-up in neffos
// v0.0.24's waiterOnce on the client's Dial).
type ackSafeSocket struct {
	neffos.Socket
	reads   atomic.Int32
	done    atomic.Int32
	wrote   atomic.Bool
	once    sync.Once
	handled chan struct{}
}

func (s *ackSafeSocket) release() { s.once.Do(func() { close(s.handled) }) }

func (s *ackSafeSocket) ReadData(timeout time.Duration) ([]byte, neffos.MessageType, error) {
	if s.reads.Add(1) == 2 {
		s.release()
	}
	b, typ, err := s.Socket.ReadData(timeout)
	s.done.Add(1)
	if err != nil {
		s.release()
	}
	return b, typ, err
}

func (s *ackSafeSocket) WriteText(b []byte, timeout time.Duration) error {
	err := s.Socket.WriteText(b, timeout)
	s.afterWrite(err)
	return err
}

func (s *ackSafeSocket) WriteBinary(b []byte, timeout time.Duration) error {
	err := s.Socket.WriteBinary(b, timeout)
	s.afterWrite(err)
	return err
}

func (s *ackSafeSocket) afterWrite(err error) {
	if err != nil || !s.wrote.CompareAndSwap(false, true) {
		return
	}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-s.handled:
	case <-t.C:
	}
}

func (s *ackSafeSocket) idle() bool { return s.reads.Load() == s.done.Load()+1 }

// readyAfterUpgrade: the server-side half of the same workaround.
type readyAfterUpgrade struct {
	neffos.Socket
	first sync.Once
	ready chan struct{}
}

func (s *readyAfterUpgrade) ReadData(timeout time.Duration) ([]byte, neffos.MessageType, error) {
	b, typ, err := s.Socket.ReadData(timeout)
	s.first.Do(func() { <-s.ready })
	return b, typ, err
}

func serveNeffos(srv *neffos.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s *readyAfterUpgrade
		_, _ = srv.Upgrade(w, r, func(sock neffos.Socket) neffos.Socket {
			s = &readyAfterUpgrade{Socket: sock, ready: make(chan struct{})}
			return s
		}, nil)
		if s != nil {
			close(s.ready)
		}
	})
}

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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: serveNeffos(srv), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		if err := exc.Close(); err != nil {
			t.Errorf("exchange Close: %v", err)
		}
		_ = hs.Close()
	})
	return &hNode{srv: srv, exc: exc, url: "ws://" + ln.Addr().String()}
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
	sock   *ackSafeSocket
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
	dialer := func(ctx context.Context, url string) (neffos.Socket, error) {
		s, err := gorilla.DefaultDialer(ctx, url)
		if err != nil {
			return nil, err
		}
		hc.sock = &ackSafeSocket{Socket: s, handled: make(chan struct{})}
		return hc.sock, nil
	}
	c, err := neffos.Dial(ctx, dialer, n.url, handler)
	if err != nil {
		return nil, err
	}
	hc.c, hc.id = c, c.ID
	waitUntil(5*time.Second, hc.sock.idle) // settle before asking
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
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

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
