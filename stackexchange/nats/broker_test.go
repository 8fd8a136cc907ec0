package nats_test

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"

	natsgo "github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout/stackexchange/nats"
	"github.com/neffos-contrib/scaleout/stackexchange/stackexchangetest"
)

// TestBroker runs the Broker contract (stackexchangetest.RunBroker) on an
// embedded NATS server of the test's own: a batch Subscribe costs one
// PING/PONG round trip, counted on the broker's connection; Unsubscribe
// does not wait for the server.
func TestBroker(t *testing.T) {
	stackexchangetest.RunBroker(t, func(t *testing.T) stackexchangetest.BrokerFixture {
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
		b, err := nats.NewBroker(nc)
		if err != nil {
			t.Fatal(err)
		}
		return stackexchangetest.BrokerFixture{
			Broker: b,
			Publish: func(_ context.Context, channel string, payload []byte) error {
				return pub.Publish(channel, payload)
			},
			Channels: func(_ context.Context, prefix string) ([]string, error) {
				return serverSubjectList(t, monitor, prefix), nil
			},
			SubscribeCalls: pings.count,
			RoundTrips:     func(int) int { return 1 },
		}
	})
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
