package main

// Workarounds for two neffos v0.0.24 client/handshake bugs, the same as the
// conformance suite's (stackexchange/stackexchangetest/dialer.go). Without
// them a benchmark that dials hundreds of clients hangs now and then.
// v0.0.25 fixed both; the wrappers are harmless there.

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
)

// ackSafeDial dials like gorilla.DefaultDialer, working around a lost
// wake-up in neffos v0.0.24's waiterOnce: the client's first write (its
// handshake ack) returns only after the reader handled the server's answer.
func ackSafeDial(ctx context.Context, url string) (neffos.Socket, error) {
	s, err := gorilla.DefaultDialer(ctx, url)
	if err != nil {
		return nil, err
	}
	return &ackSafeSocket{Socket: s, handled: make(chan struct{})}, nil
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

// idle reports whether the reader goroutine is back in ReadData.
func (s *ackSafeSocket) idle() bool { return s.reads.Load() == s.done.Load()+1 }

// settle waits (bounded) until the client's reader is not inside a frame's
// handling: a v0.0.24 client that asks (Connect, JoinRoom) while its reader
// handles a frame reads the socket from two goroutines.
func (s *ackSafeSocket) settle() {
	deadline := time.Now().Add(5 * time.Second)
	for !s.idle() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// readyAfterUpgrade is the server-side half: the server's reader does not
// hand neffos the client's first frame before Server.Upgrade returned.
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

// serveNeffos serves srv like srv.ServeHTTP, with readyAfterUpgrade.
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
