package main

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kataras/neffos"
)

// Scenario is the outcome of one scenario: a correctness verdict and its
// numbers.
type Scenario struct {
	Name      string `json:"name"`
	Messages  int    `json:"messages"`
	Expected  int64  `json:"expected"`  // deliveries that must happen
	Delivered int64  `json:"delivered"` // expected deliveries that happened (each counted once)
	Missing   int64  `json:"missing"`
	Dups      int64  `json:"duplicates"`
	Wrong     int64  `json:"wrong"` // deliveries where none was expected
	// Order counts deliveries that came after a later message of the same
	// publishing node (to the same client).
	Order   int64   `json:"order_violations"`
	OK      bool    `json:"ok"`
	Seconds float64 `json:"seconds"`
	PerSec  float64 `json:"per_sec,omitempty"` // deliveries (or connects, asks) per second
	P50ms   float64 `json:"p50_ms,omitempty"`
	P99ms   float64 `json:"p99_ms,omitempty"`
	Note    string  `json:"note,omitempty"`
}

func (s Scenario) verdict() string {
	if s.OK {
		return "pass"
	}
	if s.Note != "" && s.Missing == 0 && s.Dups == 0 && s.Wrong == 0 && s.Order == 0 {
		return "fails (" + s.Note + ")"
	}
	v := "FAIL"
	if s.Missing > 0 {
		v += fmt.Sprintf(" missing %d", s.Missing)
	}
	if s.Dups > 0 {
		v += fmt.Sprintf(" dup %d", s.Dups)
	}
	if s.Wrong > 0 {
		v += fmt.Sprintf(" wrong %d", s.Wrong)
	}
	if s.Order > 0 {
		v += fmt.Sprintf(" out-of-order %d", s.Order)
	}
	return v
}

// delivery describes a broadcast-style scenario.
type delivery struct {
	name     string
	event    string
	n        int               // messages
	interval time.Duration     // 0: burst
	from     func(seq int) int // the node that publishes message seq
	send     func(srv *neffos.Server, seq int, body []byte)
	expect   func(c *client, seq int) bool
	lat      bool
}

// deliver sends d.n messages, waits (bounded) for every expected delivery,
// waits a grace period for late and duplicate ones, and judges.
func (r *runner) deliver(cl *cluster, d delivery) Scenario {
	t := newTally(d.event, d.n, len(cl.nodes), len(cl.clients), d.lat)
	var expected int64
	for _, c := range cl.clients {
		if c == nil {
			continue
		}
		c.mu.Lock()
		c.lat = c.lat[:0]
		c.mu.Unlock()
		for seq := 0; seq < d.n; seq++ {
			if d.expect(c, seq) {
				expected++
			}
		}
	}
	current.Store(t)
	start := time.Now()
	for seq := 0; seq < d.n; seq++ {
		if d.interval > 0 {
			if w := time.Until(start.Add(time.Duration(seq) * d.interval)); w > 0 {
				time.Sleep(w)
			}
		}
		from := d.from(seq)
		d.send(cl.nodes[from].srv, seq, body(seq, from, time.Now()))
	}
	// Wait for every expected delivery, at most cfg.timeout, and give up
	// early when nothing arrived for cfg.idle (lost messages never come).
	deadline := time.Now().Add(r.cfg.timeout)
	seen, progress := t.total.Load(), time.Now()
	for t.total.Load() < expected && time.Now().Before(deadline) && time.Since(progress) < r.cfg.idle {
		time.Sleep(time.Millisecond)
		if v := t.total.Load(); v != seen {
			seen, progress = v, time.Now()
		}
	}
	timedOut := t.total.Load() < expected
	time.Sleep(r.cfg.grace) // late and duplicate deliveries
	current.Store(nil)

	s := Scenario{Name: d.name, Messages: d.n, Expected: expected}
	var lats []int64
	for _, c := range cl.clients {
		if c == nil {
			continue
		}
		for seq := 0; seq < d.n; seq++ {
			got := int64(t.counts[c.idx*d.n+seq].Load())
			switch {
			case d.expect(c, seq) && got == 0:
				s.Missing++
			case d.expect(c, seq):
				s.Delivered++
				s.Dups += got - 1
			default:
				s.Wrong += got
			}
		}
		if d.lat {
			c.mu.Lock()
			lats = append(lats, c.lat...)
			c.mu.Unlock()
		}
	}
	s.Wrong += t.bad.Load()
	s.Order = t.order.Load()
	s.OK = s.Missing == 0 && s.Dups == 0 && s.Wrong == 0 && s.Order == 0
	if last := t.last.Load(); last > 0 {
		s.Seconds = time.Duration(last - start.UnixNano()).Seconds()
	}
	if timedOut {
		s.Note = fmt.Sprintf("gave up waiting after %v", time.Since(start).Round(time.Millisecond))
	}
	if s.Seconds > 0 {
		s.PerSec = float64(s.Delivered) / s.Seconds
	}
	if len(lats) > 0 {
		slices.Sort(lats)
		s.P50ms = ms(lats[len(lats)/2])
		s.P99ms = ms(lats[min(len(lats)-1, len(lats)*99/100)])
	}
	return s
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

// otherNode returns a node index other than i when there is one.
func otherNode(cl *cluster, i int) int { return (i + 1) % len(cl.nodes) }

func (r *runner) live(cl *cluster) []*client {
	var out []*client
	for _, c := range cl.clients {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// connectAll dials n clients spread round-robin over the nodes with
// cfg.dialers concurrent dialers, and reports the connect rate.
func (r *runner) connectAll(cl *cluster, n int) Scenario {
	return connectClients(cl, n, r.cfg.dialers, r.cfg.connectTimeout)
}

// connectClients dials n clients spread round-robin over the nodes, each
// into namespace nsBench, with dialers concurrent dialers, and reports the
// connect rate from the first dial to the last Connect returning. Every
// dial is bounded by 10s, and no dial starts after timeout: the clients
// left are counted as missing.
func connectClients(cl *cluster, n, dialers int, timeout time.Duration) Scenario {
	cl.clients = make([]*client, n)
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(timeout)
	for w := 0; w < dialers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if time.Now().After(deadline) {
					failed.Add(1)
					continue
				}
				c := &client{idx: i, node: i % len(cl.nodes)}
				if err := dial(cl.nodes[c.node].url, nsBench, 10*time.Second, c, c.record); err != nil {
					failed.Add(1)
					continue
				}
				cl.clients[i] = c
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	s := Scenario{Name: "connect", Messages: n, Expected: int64(n), Delivered: int64(n) - failed.Load(), Missing: failed.Load(), Seconds: el.Seconds()}
	s.OK = s.Missing == 0
	s.PerSec = float64(s.Delivered) / el.Seconds()
	if s.Missing > 0 && time.Now().After(deadline) {
		s.Note = fmt.Sprintf("stopped dialling after %v", timeout)
	}
	return s
}

// joinRoom joins every 4th client to the room.
func (r *runner) joinRoom(cl *cluster) error {
	for _, c := range cl.clients {
		if c == nil || c.idx%4 != 0 {
			continue
		}
		c.sock.Settle()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.nsc.JoinRoom(ctx, room)
		cancel()
		if err != nil {
			return fmt.Errorf("client %d: join room: %w", c.idx, err)
		}
	}
	return nil
}

func msg(event string, b []byte) neffos.Message {
	return neffos.Message{Namespace: nsBench, Event: event, Body: b}
}

// roundRobin publishes message seq from node seq mod K.
func roundRobin(cl *cluster) func(int) int {
	return func(seq int) int { return seq % len(cl.nodes) }
}

func (r *runner) broadcastBurst(cl *cluster) Scenario {
	return r.deliver(cl, delivery{
		name: "broadcast", event: "burst", n: r.messages, from: roundRobin(cl),
		send: func(srv *neffos.Server, _ int, b []byte) {
			srv.Broadcast(nil, msg("burst", b))
		},
		expect: func(*client, int) bool { return true },
	})
}

func (r *runner) broadcastPaced(cl *cluster) Scenario {
	return r.deliver(cl, delivery{
		name: "paced", event: "paced", n: r.cfg.paced, interval: time.Second / time.Duration(max(1, r.cfg.load/len(cl.clients))), lat: true,
		from: roundRobin(cl),
		send: func(srv *neffos.Server, _ int, b []byte) {
			srv.Broadcast(nil, msg("paced", b))
		},
		expect: func(*client, int) bool { return true },
	})
}

func (r *runner) roomBroadcast(cl *cluster) Scenario {
	return r.deliver(cl, delivery{
		name: "room", event: "room", n: r.messages, from: roundRobin(cl),
		send: func(srv *neffos.Server, _ int, b []byte) {
			m := msg("room", b)
			m.Room = room
			srv.Broadcast(nil, m)
		},
		expect: func(c *client, _ int) bool { return c.idx%4 == 0 },
	})
}

// to sends each message To one client held by another node than the sender.
func (r *runner) to(cl *cluster) Scenario {
	live := r.live(cl)
	n := min(r.messages, 50)
	target := func(seq int) *client { return live[(seq*7)%len(live)] }
	return r.deliver(cl, delivery{
		name: "to", event: "to", n: n,
		from: func(seq int) int { return otherNode(cl, target(seq).node) },
		send: func(srv *neffos.Server, seq int, b []byte) {
			m := msg("to", b)
			m.To = target(seq).id
			srv.Broadcast(nil, m)
		},
		expect: func(c *client, seq int) bool { return c == target(seq) },
	})
}

// exclude broadcasts 5 messages that must reach everyone but one client.
// how: "conn" (Broadcast(*Conn) on the client's node), "id-own" and
// "id-other" (Broadcast(neffos.Exclude(id)) on its node / another node).
func (r *runner) exclude(cl *cluster, how string) Scenario {
	live := r.live(cl)
	ex := live[len(live)/2]
	from := ex.node
	ev := "x" + how
	// Broadcast's first parameter is a fmt.Stringer on neffos v0.0.24 and a
	// neffos.Sender on v0.0.25: call it with concrete values only.
	send := func(srv *neffos.Server, _ int, b []byte) { srv.Broadcast(neffos.Exclude(ex.id), msg(ev, b)) }
	switch how {
	case "conn":
		v, ok := cl.nodes[ex.node].conns.Load(ex.id)
		if !ok {
			return Scenario{Name: "exclude-" + how, Note: "server conn not found"}
		}
		conn := v.(*neffos.Conn)
		send = func(srv *neffos.Server, _ int, b []byte) { srv.Broadcast(conn, msg(ev, b)) }
	case "id-other":
		from = otherNode(cl, ex.node)
	}
	return r.deliver(cl, delivery{
		name: "exclude-" + how, event: ev, n: 5,
		from:   func(int) int { return from },
		send:   send,
		expect: func(c *client, _ int) bool { return c != ex },
	})
}

// ask runs Server.Ask sequentially to clients on another node than the
// asking one, each bounded by cfg.askTimeout. After 3 failures in a row
// with no success it stops: the exchange's Ask does not work.
func (r *runner) ask(cl *cluster) Scenario {
	live := r.live(cl)
	s := Scenario{Name: "ask", Messages: r.cfg.asks}
	var lats []int64
	fails, streak := 0, 0
	start := time.Now()
	for i := 0; i < r.cfg.asks; i++ {
		t := live[(i*13)%len(live)]
		from := otherNode(cl, t.node)
		b := body(i, from, time.Now())
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.askTimeout)
		t0 := time.Now()
		resp, err := cl.nodes[from].srv.Ask(ctx, neffos.Message{Namespace: nsBench, Event: evAsk, To: t.id, Body: b})
		d := time.Since(t0)
		cancel()
		s.Expected++
		if err == nil && bytes.Equal(resp.Body, b) {
			s.Delivered++
			lats = append(lats, int64(d))
			streak = 0
			continue
		}
		fails++
		s.Missing++
		if streak++; streak >= 3 && s.Delivered == 0 {
			s.Note = fmt.Sprintf("never returns (%d of %d Asks timed out after %v, stopped)", fails, s.Expected, r.cfg.askTimeout)
			if err != nil && err != context.DeadlineExceeded {
				s.Note = fmt.Sprintf("fails: %v", err)
			}
			break
		}
	}
	s.Seconds = time.Since(start).Seconds()
	s.OK = s.Missing == 0
	if len(lats) > 0 {
		slices.Sort(lats)
		s.P50ms = ms(lats[len(lats)/2])
		s.P99ms = ms(lats[min(len(lats)-1, len(lats)*99/100)])
		s.PerSec = float64(len(lats)) / s.Seconds
	}
	return s
}

// churn connects fresh clients to namespace "churn" and, the moment a
// client's Connect returns, broadcasts from another node a message only
// that client must get (its own body). Clients come in batches of
// churnBatch, dialled one after the other; each batch then waits at most
// cfg.churnWait for its messages and closes. A client without its message
// by then is a miss.
const churnBatch = 10

func (r *runner) churn(cl *cluster) Scenario {
	n := r.cfg.churn
	s := Scenario{Name: "churn", Messages: n, Expected: int64(n)}
	start := time.Now()
	type fresh struct {
		c     *client
		count atomic.Int32
	}
	for i := 0; i < n; {
		var batch []*fresh
		for ; i < n && len(batch) < churnBatch; i++ {
			j := i % len(cl.nodes)
			want := fmt.Sprintf("fresh-%d", i)
			f := &fresh{c: &client{idx: -1, node: j}}
			err := dial(cl.nodes[j].url, nsChurn, 10*time.Second, f.c, func(m neffos.Message) {
				if m.Event == "fresh" && string(m.Body) == want {
					f.count.Add(1)
				}
			})
			if err != nil {
				s.Missing++
				s.Note = "dial: " + err.Error()
				continue
			}
			cl.nodes[otherNode(cl, j)].srv.Broadcast(nil, neffos.Message{Namespace: nsChurn, Event: "fresh", Body: []byte(want)})
			batch = append(batch, f)
		}
		all := func() bool {
			for _, f := range batch {
				if f.count.Load() == 0 {
					return false
				}
			}
			return true
		}
		deadline := time.Now().Add(r.cfg.churnWait)
		for !all() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(2 * time.Millisecond) // a duplicate would arrive right behind
		for _, f := range batch {
			switch got := f.count.Load(); {
			case got == 0:
				s.Missing++
			default:
				s.Delivered++
				s.Dups += int64(got - 1)
			}
			f.c.nc.Close()
		}
	}
	s.Seconds = time.Since(start).Seconds()
	s.OK = s.Missing == 0 && s.Dups == 0
	return s
}

// snapshot is the process's goroutines and live heap after a full GC.
type snapshot struct {
	Goroutines int
	Heap       uint64
}

func takeSnapshot() snapshot {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return snapshot{Goroutines: runtime.NumGoroutine(), Heap: ms.HeapAlloc}
}
