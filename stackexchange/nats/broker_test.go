package nats_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout/stackexchange/nats"
)

// TestBrokerBatchSubscribe: one Subscribe call with thousands of channels
// costs one PING/PONG round trip and returns once the server holds every
// subscription; one Unsubscribe call drops them all. The test owns its
// (embedded) NATS server, so the server's counts are the broker's alone.
func TestBrokerBatchSubscribe(t *testing.T) {
	url, monitor := startNATS(t, nil)
	pings := &pingCounter{}
	nc, err := natsgo.Connect(url, natsgo.SetCustomDialer(pings), natsgo.NoEcho())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	pub, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)

	const n = 2000
	prefix := uniquePrefix()
	channels := make([]string, n, n+1)
	for i := range channels {
		channels[i] = prefix + ".ch." + strconv.Itoa(i)
	}
	channels = append(channels, channels[0]) // a repeat counts once

	delivered := make(chan string, 64)
	var reports atomic.Int64
	b, err := nats.NewBroker(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(func(ch string, payload []byte) {
		select {
		case delivered <- ch + "=" + string(payload):
		default:
		}
	}, func(error) { reports.Add(1) }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := pings.count()
	start := time.Now()
	if err := b.Subscribe(ctx, channels...); err != nil {
		t.Fatalf("Subscribe of %d channels: %v", n, err)
	}
	t.Logf("Subscribe of %d channels in one call: %v", n, time.Since(start))
	if got := pings.count() - before; got != 1 {
		t.Errorf("Subscribe of %d channels sent %d PINGs, want one round trip", n, got)
	}
	// The server answered the PING after the SUBs, so it counts them all
	// now, without waiting.
	if got := serverSubjects(t, monitor, prefix); got != n {
		t.Fatalf("the server holds %d of the %d subscriptions after Subscribe returned", got, n)
	}

	// Each sampled channel delivers.
	for i, ch := range []string{channels[0], channels[1], channels[n/2], channels[n-1]} {
		body := fmt.Sprintf("m%d", i)
		if err := pub.Publish(ch, []byte(body)); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-delivered:
			if got != ch+"="+body {
				t.Fatalf("delivered %q, want %q", got, ch+"="+body)
			}
		case <-ctx.Done():
			t.Fatalf("publish on %s never delivered", ch)
		}
	}

	if err := b.Unsubscribe(ctx, channels[:n]...); err != nil {
		t.Fatalf("Unsubscribe of %d channels: %v", n, err)
	}
	// Unsubscribe does not wait for the server: poll until it has them all.
	var left int
	if !waitUntil(10*time.Second, func() bool {
		left = serverSubjects(t, monitor, prefix)
		return left == 0
	}) {
		t.Fatalf("%d of %d subscriptions still held 10s after one Unsubscribe", left, n)
	}

	// The broker still works after the batch: subscribe one again.
	if err := b.Subscribe(ctx, channels[7]); err != nil {
		t.Fatalf("Subscribe after the batch: %v", err)
	}
	if got := serverSubjectList(t, monitor, prefix); len(got) != 1 || got[0] != channels[7] {
		t.Fatalf("the server holds %v, want [%s]", got, channels[7])
	}
	if n := reports.Load(); n != 0 {
		t.Errorf("the broker reported %d errors", n)
	}
}

// pingCounter is a nats.CustomDialer whose connections count the PINGs the
// client writes (the round trips of Flush).
type pingCounter struct {
	mu    sync.Mutex
	n     int
	carry []byte // the end of the last write, for a PING split across two
}

func (p *pingCounter) Dial(network, address string) (net.Conn, error) {
	c, err := net.Dial(network, address)
	if err != nil {
		return nil, err
	}
	return &pingConn{Conn: c, p: p}, nil
}

func (p *pingCounter) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

var ping = []byte("PING\r\n")

func (p *pingCounter) wrote(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	buf := append(p.carry, b...)
	p.n += bytes.Count(buf, ping)
	// Keep what could start a PING finished by the next write, but never
	// a whole one (counted already).
	keep := min(len(buf), len(ping)-1)
	p.carry = append([]byte(nil), buf[len(buf)-keep:]...)
}

type pingConn struct {
	net.Conn
	p *pingCounter
}

func (c *pingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.p.wrote(b[:n])
	return n, err
}
