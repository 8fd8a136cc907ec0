package stackexchangetest

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
)

// ackSafeDial dials like gorilla.DefaultDialer, working around a lost
// wake-up in neffos v0.0.24's waiterOnce: when the server's handshake answer
// is handled between Dial's "is it ready?" check and its wait, Dial blocks
// forever. Here the client's first write (its handshake ack) returns only
// after the reader has handled the server's answer (the reader asks for its
// second frame), so Dial's wait finds the connection ready. neffos v0.0.25
// fixed waiterOnce; the wrapper is harmless there.
func ackSafeDial(ctx context.Context, url string, slow bool) (neffos.Socket, error) {
	dial := gorilla.DefaultDialer
	if slow {
		dial = slowDialer
	}
	s, err := dial(ctx, url)
	if err != nil {
		return nil, err
	}
	return &ackSafeSocket{Socket: s, handled: make(chan struct{}), resume: make(chan struct{})}, nil
}

// slowDialer dials with a 4 KiB socket receive buffer, so that a client
// that stops reading pushes back on the server quickly.
var slowDialer = gorilla.Dialer(&websocket.Dialer{
	HandshakeTimeout: 10 * time.Second,
	NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4 << 10)
		}
		return c, err
	},
}, nil)

type ackSafeSocket struct {
	neffos.Socket
	reads   atomic.Int32 // ReadData calls entered
	done    atomic.Int32 // ReadData calls returned
	wrote   atomic.Bool
	once    sync.Once
	handled chan struct{}
	stalled atomic.Bool   // the client stopped reading
	resume  chan struct{} // closed to read again
	resumed sync.Once
}

// stall makes the client stop reading its socket until unstall.
func (s *ackSafeSocket) stall()   { s.stalled.Store(true) }
func (s *ackSafeSocket) unstall() { s.resumed.Do(func() { close(s.resume) }) }

func (s *ackSafeSocket) release() { s.once.Do(func() { close(s.handled) }) }

func (s *ackSafeSocket) ReadData(timeout time.Duration) ([]byte, neffos.MessageType, error) {
	if s.reads.Add(1) == 2 {
		s.release() // the first frame, the server's answer, was handled.
	}
	if s.stalled.Load() {
		<-s.resume
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
	t := time.NewTimer(10 * time.Second) // the server refused (no second read): give up waiting
	defer t.Stop()
	select {
	case <-s.handled:
	case <-t.C:
	}
}

// idle reports whether the reader goroutine is back in ReadData, that is,
// not inside neffos's handling of a frame.
func (s *ackSafeSocket) idle() bool { return s.reads.Load() == s.done.Load()+1 }

// readyAfterUpgrade is the server-side half of the waiterOnce workaround:
// the server's reader does not hand neffos the client's first frame (its
// handshake ack) before Server.Upgrade returned, that is, before neffos
// marked the connection ready. Otherwise neffos v0.0.24 may lose that
// wake-up and never answer the client's handshake.
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
		slow := r.URL.Query().Has("slow")
		_, _ = srv.Upgrade(w, r, func(sock neffos.Socket) neffos.Socket {
			if tc, ok := sock.NetConn().(*net.TCPConn); ok && slow {
				_ = tc.SetWriteBuffer(4 << 10)
			}
			s = &readyAfterUpgrade{Socket: sock, ready: make(chan struct{})}
			return s
		}, nil)
		if s != nil {
			close(s.ready)
		}
	})
}

// NetConn returns the connection with a Close that also releases the
// client's first write: a refused handshake ends with the reader closing the
// connection instead of reading a second frame.
func (s *ackSafeSocket) NetConn() net.Conn {
	return &releaseOnClose{Conn: s.Socket.NetConn(), release: s.release}
}

type releaseOnClose struct {
	net.Conn
	release func()
}

func (c *releaseOnClose) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
