// Package neffostest serves neffos servers and dials real neffos Go clients
// on loopback for this module's tests, with the two workarounds for neffos
// v0.0.24 bugs that the conformance suite uses (see
// stackexchange/stackexchangetest/dialer.go, where they are explained):
//
//   - Serve upgrades through Server.Upgrade with a socket wrapper that hands
//     neffos the client's first frame only after Upgrade returned, so the
//     server never loses the handshake wake-up;
//   - Dial returns only once the client handled the server's handshake
//     answer, and Client.Settle waits until the client's reader is idle, so
//     that a client that asks (Connect, JoinRoom, ...) never reads its
//     socket from two goroutines.
//
// Both are harmless on neffos v0.0.25.
package neffostest

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
)

// Serve serves srv on a free loopback port until the test ends and returns
// its websocket URL. It does not close srv.
func Serve(t testing.TB, srv *neffos.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: Handler(srv), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = hs.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = hs.Close()
		<-done
	})
	return "ws://" + ln.Addr().String()
}

// Handler serves srv like srv.ServeHTTP, with the server-side workaround.
func Handler(srv *neffos.Server) http.Handler {
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

// Client is a real neffos Go client.
type Client struct {
	*neffos.Client
	sock *ackSafeSocket
}

// Dial connects a neffos client to url with handler.
func Dial(ctx context.Context, url string, handler neffos.ConnHandler) (*Client, error) {
	c := &Client{}
	dialer := func(ctx context.Context, url string) (neffos.Socket, error) {
		s, err := gorilla.DefaultDialer(ctx, url)
		if err != nil {
			return nil, err
		}
		c.sock = &ackSafeSocket{Socket: s, handled: make(chan struct{})}
		return c.sock, nil
	}
	nc, err := neffos.Dial(ctx, dialer, url, handler)
	if err != nil {
		return nil, err
	}
	c.Client = nc
	return c, nil
}

// Settle waits (at most 5s) until the client's reader is not inside the
// handling of a frame. Call it before each call that asks the server.
func (c *Client) Settle() {
	deadline := time.Now().Add(5 * time.Second)
	for !c.sock.idle() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling interval
	}
}

// Connect settles, then connects to namespace.
func (c *Client) Connect(ctx context.Context, namespace string) (*neffos.NSConn, error) {
	c.Settle()
	return c.Client.Connect(ctx, namespace)
}

type ackSafeSocket struct {
	neffos.Socket
	reads   atomic.Int32 // ReadData calls entered
	done    atomic.Int32 // ReadData calls returned
	wrote   atomic.Bool
	once    sync.Once
	handled chan struct{}
}

func (s *ackSafeSocket) release() { s.once.Do(func() { close(s.handled) }) }

func (s *ackSafeSocket) ReadData(timeout time.Duration) ([]byte, neffos.MessageType, error) {
	if s.reads.Add(1) == 2 {
		s.release() // the first frame, the server's answer, was handled.
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

// afterWrite holds the client's first write (its handshake ack) until the
// reader handled the server's answer.
func (s *ackSafeSocket) afterWrite(err error) {
	if err != nil || !s.wrote.CompareAndSwap(false, true) {
		return
	}
	t := time.NewTimer(10 * time.Second) // the server refused: give up waiting
	defer t.Stop()
	select {
	case <-s.handled:
	case <-t.C:
	}
}

func (s *ackSafeSocket) idle() bool { return s.reads.Load() == s.done.Load()+1 }
