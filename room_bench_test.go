//go:build unix

package scaleout_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/neffostest"
)

// BenchmarkRoomBroadcast measures what a room broadcast costs on a node as a
// function of the node's other connections: one neffos server with the
// exchange on a MemoryBroker, real neffos clients on loopback in rooms of
// roomSize, and each op broadcasts to room "r0". An op's cost includes the
// delivery: the timer stops only when r0's members received every message.
// The goal: with 10,000 connections a room broadcast costs within 2x of one
// on a node holding only the room's 10. Run with
//
//	go test -run '^$' -bench BenchmarkRoomBroadcast -benchtime 2s -count 3 .
//
// (a time-based -benchtime, as one op costs ~50µs with 10 connections and
// milliseconds with 10,000 on an engine that scans every connection).
// Each op is pipelined: b.N broadcasts are queued back to back, then the
// timer runs until the last one arrived, so ns/op is the node's cost per
// room broadcast at full throughput.
//
// Each size's clients are dialed once and reused across b.N rounds and
// -count runs; the fixture is closed when the next size starts and when the
// benchmark ends, before TestMain looks for leaked goroutines.
func BenchmarkRoomBroadcast(b *testing.B) {
	if testing.Short() {
		b.Skip("dials up to 10,000 clients; skipped with -short")
	}
	var fx *roomFixture // the current size's fixture; sub-benchmarks run one at a time
	b.Cleanup(func() {
		if fx != nil {
			fx.close()
		}
	})
	for _, conns := range []int{roomSize, 10_000} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			if fx == nil || fx.conns != conns {
				if fx != nil {
					fx.close()
					fx = nil
				}
				var err error
				if fx, err = newRoomFixture(conns); err != nil {
					b.Fatal(err)
				}
			}
			fx.run(b)
		})
	}
}

const (
	roomSize      = 10
	benchNS       = "bench"
	benchEvent    = "m"
	dialParallel  = 64
	dialLimit     = 5 * time.Minute // how long dialing every client may take
	deliveryLimit = 2 * time.Minute // how long b.N messages may take to arrive

	// Environment of the client process (TestRoomBenchClients).
	envClientsURL  = "ROOMBENCH_URL"
	envClientsFrom = "ROOMBENCH_FROM"
	envClientsTo   = "ROOMBENCH_TO"
	readyLine      = "roombench: clients ready"
)

var benchBody = []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")

// roomFixture is one node and its conns clients; client i is in room
// "r<i/roomSize>". The members of r0, the measured ones, are dialed from
// this process. The others are dialed from a child process running
// TestRoomBenchClients, as a real node's clients would be: both ends of
// 10,000 loopback connections in one process do not fit in a common limit
// of 20,000 open files.
type roomFixture struct {
	conns   int
	exc     *scaleout.Exchange
	srv     *neffos.Server
	hs      *http.Server
	served  chan struct{}
	members []*neffostest.Client
	got     [roomSize]atomic.Int64 // "m" events received, per member of r0
	notify  chan struct{}          // poked when a member of r0 receives one
	others  *clientProcess
}

func newRoomFixture(conns int) (_ *roomFixture, err error) {
	fx := &roomFixture{conns: conns, notify: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			fx.close()
		}
	}()
	if err := raiseNoFile(uint64(conns + 256)); err != nil {
		return nil, err
	}
	// The queue must hold a whole burst of b.N broadcasts: this measures
	// delivery, not the slow-consumer policy.
	exc := scaleout.New(scaleout.NewMemoryBroker().Broker(), "roombench", scaleout.Options{QueueSize: 1 << 20})
	srv := neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{benchNS: neffos.Events{}})
	if err := srv.UseStackExchange(exc); err != nil {
		srv.Close()
		_ = exc.Close()
		return nil, err
	}
	fx.exc, fx.srv = exc, srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	url := "ws://" + ln.Addr().String()
	fx.hs = &http.Server{Handler: neffostest.Handler(srv), ReadHeaderTimeout: 10 * time.Second}
	fx.served = make(chan struct{})
	go func() {
		defer close(fx.served)
		_ = fx.hs.Serve(ln)
	}()

	members := min(conns, roomSize)
	fx.members = make([]*neffostest.Client, members)
	err = dialClients(0, members, func(i int) error {
		c, err := dialMember(url, i, func() {
			fx.got[i].Add(1)
			select {
			case fx.notify <- struct{}{}:
			default:
			}
		})
		fx.members[i] = c
		return err
	})
	if err != nil {
		return nil, err
	}
	if conns > members {
		if fx.others, err = startClientProcess(url, members, conns); err != nil {
			return nil, err
		}
	}
	if n := exc.Stats().Conns; n != conns {
		return nil, fmt.Errorf("the exchange tracks %d connections, want %d", n, conns)
	}
	return fx, nil
}

// dialClients runs dial(i) for each i in [from, to), dialParallel at a time.
func dialClients(from, to int, dial func(i int) error) error {
	errs := make([]error, to-from)
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	for range min(dialParallel, to-from) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= to {
					return
				}
				errs[i-from] = dial(i)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dialMember connects client i to namespace benchNS and joins its room;
// received is called for each benchEvent.
func dialMember(url string, i int, received func()) (*neffostest.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	handler := neffos.Namespaces{benchNS: neffos.Events{
		benchEvent: func(*neffos.NSConn, neffos.Message) error {
			received()
			return nil
		},
	}}
	c, err := neffostest.Dial(ctx, url, handler)
	if err != nil {
		return nil, fmt.Errorf("client %d: %w", i, err)
	}
	nsc, err := c.Connect(ctx, benchNS)
	if err == nil {
		c.Settle()
		_, err = nsc.JoinRoom(ctx, roomName(i))
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("client %d: %w", i, err)
	}
	return c, nil
}

func roomName(i int) string { return "r" + strconv.Itoa(i/roomSize) }

func (fx *roomFixture) run(b *testing.B) {
	var base [roomSize]int64
	for i := range base {
		base[i] = fx.got[i].Load()
	}
	dropped := fx.exc.Stats().Dropped
	msg := neffos.Message{Namespace: benchNS, Room: roomName(0), Event: benchEvent, Body: benchBody}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		fx.srv.Broadcast(nil, msg)
	}
	fx.waitDelivered(b, base, int64(b.N))
	elapsed := b.Elapsed()
	b.StopTimer()
	b.ReportMetric(float64(roomSize*b.N)/elapsed.Seconds(), "deliveries/s")
	if d := fx.exc.Stats().Dropped - dropped; d != 0 {
		b.Fatalf("the exchange dropped %d messages", d)
	}
}

// waitDelivered waits until each member of r0 received n messages more than
// base.
func (fx *roomFixture) waitDelivered(b *testing.B, base [roomSize]int64, n int64) {
	deadline := time.NewTimer(deliveryLimit)
	defer deadline.Stop()
	for {
		missing := -1
		for i := range base {
			if fx.got[i].Load()-base[i] < n {
				missing = i
				break
			}
		}
		if missing < 0 {
			return
		}
		select {
		case <-fx.notify:
		case <-deadline.C:
			b.Fatalf("after %v member %d of r0 received %d of %d messages", deliveryLimit, missing, fx.got[missing].Load()-base[missing], n)
		}
	}
}

// close closes the clients, the server and the exchange. It works on a
// partly built fixture.
func (fx *roomFixture) close() {
	if fx.others != nil {
		fx.others.stop()
	}
	for _, c := range fx.members {
		if c != nil {
			c.Close()
		}
	}
	if fx.srv != nil {
		fx.srv.Close()
	}
	if fx.hs != nil {
		_ = fx.hs.Close()
		<-fx.served
	}
	if fx.exc != nil {
		_ = fx.exc.Close()
	}
}

// raiseNoFile makes sure at least n files can be open, raising the soft
// limit up to the hard one (Go does so at start-up already; this is for
// the record and for a clear error).
func raiseNoFile(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= n {
		return nil
	}
	if lim.Max < n {
		return fmt.Errorf("need %d open files, hard limit is %d (ulimit -n)", n, lim.Max)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit: %w", err)
	}
	return nil
}

// clientProcess is a child process holding clients [from, to) of a
// fixture: this test binary running TestRoomBenchClients.
type clientProcess struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *readyWriter
	exited chan error
}

func startClientProcess(url string, from, to int) (*clientProcess, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-test.run=^TestRoomBenchClients$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		envClientsURL+"="+url,
		envClientsFrom+"="+strconv.Itoa(from),
		envClientsTo+"="+strconv.Itoa(to))
	p := &clientProcess{cmd: cmd, out: &readyWriter{ready: make(chan struct{})}, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.exited <- cmd.Wait() }()
	timeout := time.NewTimer(dialLimit)
	defer timeout.Stop()
	select {
	case <-p.out.ready:
		return p, nil
	case err := <-p.exited:
		p.exited <- err
		return nil, fmt.Errorf("client process: %v\n%s", err, p.out.String())
	case <-timeout.C:
		p.stop()
		return nil, fmt.Errorf("client process not ready after %v\n%s", dialLimit, p.out.String())
	}
}

// stop closes the child's stdin, which makes it close its clients and
// exit, and waits for it.
func (p *clientProcess) stop() {
	_ = p.stdin.Close()
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// readyWriter keeps the child's output and closes ready when readyLine
// appears in it.
type readyWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	seen  bool
}

func (w *readyWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(b)
	if !w.seen && bytes.Contains(w.buf.Bytes(), []byte(readyLine+"\n")) {
		w.seen = true
		close(w.ready)
	}
	return len(b), nil
}

func (w *readyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestRoomBenchClients is the client process of BenchmarkRoomBroadcast; it
// is skipped unless started by it. It dials clients [from, to) into their
// rooms, prints readyLine, and holds them until its stdin closes.
func TestRoomBenchClients(t *testing.T) {
	url := os.Getenv(envClientsURL)
	if url == "" {
		t.Skip("the client process of BenchmarkRoomBroadcast")
	}
	from, err1 := strconv.Atoi(os.Getenv(envClientsFrom))
	to, err2 := strconv.Atoi(os.Getenv(envClientsTo))
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if err := raiseNoFile(uint64(to - from + 256)); err != nil {
		t.Fatal(err)
	}
	clients := make([]*neffostest.Client, to-from)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	err := dialClients(from, to, func(i int) error {
		c, err := dialMember(url, i, func() {})
		clients[i-from] = c
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(readyLine)
	_, _ = io.Copy(io.Discard, os.Stdin)
}
