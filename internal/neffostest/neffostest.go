// Package neffostest serves neffos servers and dials real neffos Go clients
// on loopback, for this module's tests, the conformance suite and the
// benchmark. It is the one home of the workarounds for two neffos v0.0.24
// bugs, both harmless on v0.0.25:
//
//   - waiterOnce loses a wake-up: when the handshake's readiness signal
//     lands between a waiter's "is it ready?" check and its wait, the waiter
//     blocks forever. On the server, Handler hands neffos the client's first
//     frame (its handshake ack) only after Server.Upgrade returned, that is,
//     after neffos marked the connection ready. On the client, the first
//     write (the ack) returns only after the reader handled the server's
//     answer, so Dial's wait finds the connection ready.
//   - A client that asks (Connect, JoinRoom, Disconnect, Ask) while its
//     reader handles a frame reads the socket from a second goroutine, a
//     data race inside neffos. Socket.Settle waits until the reader is back
//     in ReadData; call it before each of those calls.
package neffostest

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
)

// smallBuffer is the socket buffer of a "slow" connection: a client that
// stops reading pushes back on the server after a few frames.
const smallBuffer = 4 << 10

// Serve serves srv with Handler on a free loopback port until the test ends
// and returns its websocket URL. It does not close srv.
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

// Handler serves srv like srv.ServeHTTP, with the server-side workaround. A
// request whose query has "slow" gets a 4 KiB socket send buffer (see
// Dialer).
func Handler(srv *neffos.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slow := r.URL.Query().Has("slow")
		var s *readyAfterUpgrade
		_, _ = srv.Upgrade(w, r, func(sock neffos.Socket) neffos.Socket {
			if tc, ok := sock.NetConn().(*net.TCPConn); ok && slow {
				_ = tc.SetWriteBuffer(smallBuffer)
			}
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

// Dialer dials like gorilla.DefaultDialer and wraps each socket in a Socket,
// handed to got (which may be nil) before neffos uses it. With slow, the
// socket has a 4 KiB receive buffer; add "slow" to the URL's query so that
// Handler shrinks the server's send buffer too. A native-only client sends
// no handshake ack: dial it with gorilla.DefaultDialer instead.
func Dialer(slow bool, got func(*Socket)) neffos.Dialer {
	dial := gorilla.DefaultDialer
	if slow {
		dial = slowDialer
	}
	return func(ctx context.Context, url string) (neffos.Socket, error) {
		s, err := dial(ctx, url)
		if err != nil {
			return nil, err
		}
		sock := &Socket{Socket: s, handled: make(chan struct{}), resume: make(chan struct{})}
		if got != nil {
			got(sock)
		}
		return sock, nil
	}
}

var slowDialer = gorilla.Dialer(&websocket.Dialer{
	HandshakeTimeout: 10 * time.Second,
	NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(smallBuffer)
		}
		return c, err
	},
}, nil)

// Socket is a client socket with the client-side workarounds; it can also
// stop reading on demand, to play a slow client.
type Socket struct {
	neffos.Socket
	reads   atomic.Int32 // ReadData calls entered
	done    atomic.Int32 // ReadData calls returned
	wrote   atomic.Bool
	once    sync.Once
	handled chan struct{} // closed once the server's handshake answer was handled
	stalled atomic.Bool
	resume  chan struct{}
	resumed sync.Once
}

// Idle reports whether the reader goroutine is back in ReadData, that is,
// not inside neffos's handling of a frame.
func (s *Socket) Idle() bool { return s.reads.Load() == s.done.Load()+1 }

// Settle waits, at most 5 s, until Idle.
func (s *Socket) Settle() {
	deadline := time.Now().Add(5 * time.Second)
	for !s.Idle() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling interval
	}
}

// Stall makes the client stop reading its socket until Unstall.
func (s *Socket) Stall() { s.stalled.Store(true) }

// Unstall lets a stalled client read again. It is idempotent.
func (s *Socket) Unstall() { s.resumed.Do(func() { close(s.resume) }) }

func (s *Socket) release() { s.once.Do(func() { close(s.handled) }) }

// ReadData implements neffos.Socket.
func (s *Socket) ReadData(timeout time.Duration) ([]byte, neffos.MessageType, error) {
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

// WriteText implements neffos.Socket.
func (s *Socket) WriteText(b []byte, timeout time.Duration) error {
	err := s.Socket.WriteText(b, timeout)
	s.afterWrite(err)
	return err
}

// WriteBinary implements neffos.Socket.
func (s *Socket) WriteBinary(b []byte, timeout time.Duration) error {
	err := s.Socket.WriteBinary(b, timeout)
	s.afterWrite(err)
	return err
}

// afterWrite holds the client's first write (its handshake ack) until the
// reader handled the server's answer.
func (s *Socket) afterWrite(err error) {
	if err != nil || !s.wrote.CompareAndSwap(false, true) {
		return
	}
	t := time.NewTimer(10 * time.Second) // safety net; a refusal closes the connection first
	defer t.Stop()
	select {
	case <-s.handled:
	case <-t.C:
	}
}

// NetConn returns the connection with a Close that also releases the
// client's first write: a refused handshake ends with the reader closing the
// connection instead of reading a second frame.
func (s *Socket) NetConn() net.Conn {
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

// Client is a real neffos Go client dialed with Dialer.
type Client struct {
	*neffos.Client
	Sock *Socket
}

// Dial connects a neffos client to url with handler.
func Dial(ctx context.Context, url string, handler neffos.ConnHandler) (*Client, error) {
	c := &Client{}
	nc, err := neffos.Dial(ctx, Dialer(false, func(s *Socket) { c.Sock = s }), url, handler)
	if err != nil {
		return nil, err
	}
	c.Client = nc
	return c, nil
}

// Settle waits until the client's reader is idle; call it before each call
// that asks the server.
func (c *Client) Settle() { c.Sock.Settle() }

// Connect settles, then connects to namespace.
func (c *Client) Connect(ctx context.Context, namespace string) (*neffos.NSConn, error) {
	c.Settle()
	return c.Client.Connect(ctx, namespace)
}
