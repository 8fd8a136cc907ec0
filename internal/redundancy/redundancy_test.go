package redundancy_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"
	"github.com/kataras/neffos"
	natsgo "github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/internal/testkit"
	"github.com/neffos-contrib/scaleout/stackexchange/nats"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
	"github.com/neffos-contrib/scaleout/stackexchange/stackexchangetest"
)

// go-redis's pool retries a failed dial once a second from a goroutine that
// ends at its next wake-up after Close: the leak check gives it 5 s.
func TestMain(m *testing.M) { os.Exit(testkit.LeakCheck(m.Run(), 5*time.Second)) }

// factory builds exchanges over a Redis and a NATS server at once, each
// node with its own go-redis client and NATS connection, as separate
// machines would have.
func factory(redisAddr, natsURL string) stackexchangetest.Factory {
	return func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange {
		rc := goredis.NewClient(&goredis.Options{Addr: redisAddr, MaxRetries: -1, DialTimeout: time.Second})
		t.Cleanup(func() { _ = rc.Close() })
		nc, err := natsgo.Connect(natsURL, natsgo.NoEcho(), natsgo.MaxReconnects(-1),
			natsgo.ReconnectWait(250*time.Millisecond), natsgo.FlusherTimeout(time.Second))
		if err != nil {
			t.Fatalf("nats: %v", err)
		}
		t.Cleanup(nc.Close)
		rb, err := redis.NewBroker(rc)
		if err != nil {
			t.Fatal(err)
		}
		nb, err := nats.NewBroker(nc)
		if err != nil {
			t.Fatal(err)
		}
		return scaleout.New(scaleout.Redundant(rb, nb), channel, opts)
	}
}

// TestConformance: the contract holds on an exchange over Redis and NATS
// at once; in particular every client gets each message once, not once per
// broker. The two heavy rules (RunLight) exercise the engine's local
// fan-out and run on each broker alone; in their 10,000-message burst a
// lagging broker falls out of step and its copies can overtake (see
// scaleout.Redundant).
func TestConformance(t *testing.T) {
	r, err := brokertest.StartRedis()
	if err != nil {
		brokertest.Missing(t, "redis-server", fmt.Sprintf("install redis-server: %v", err))
	}
	t.Cleanup(r.Stop)
	n := brokertest.NewNATS(t)
	stackexchangetest.RunLight(t, factory(r.Addr, n.URL))
}

// TestFaults: either broker killed mid-traffic loses nothing; both down
// still serve local clients; both back resume by themselves.
func TestFaults(t *testing.T) {
	stackexchangetest.RunRedundancyFaults(t, func(t *testing.T) ([]stackexchangetest.Process, stackexchangetest.Factory) {
		r, err := brokertest.StartRedis()
		if err != nil {
			brokertest.Missing(t, "redis-server", fmt.Sprintf("install redis-server: %v", err))
		}
		t.Cleanup(r.Stop)
		n := brokertest.NewNATS(t)
		return []stackexchangetest.Process{r, n}, factory(r.Addr, n.URL)
	})
}
