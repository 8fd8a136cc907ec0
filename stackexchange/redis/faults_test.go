package redis_test

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// timingSlack is added to every bound on how long a call may block: the
// timeouts are measured from inside the call, and -race slows the rest.
const timingSlack = 500 * time.Millisecond

// TestFaultRedisUnreachableAtStart starts while the broker cannot be
// reached when the exchange is built. NewStackExchange returns an error
// wrapping scaleout.ErrBrokerUnavailable within DialTimeout and leaves no
// goroutine behind, both for a closed port (refused at once) and for a
// redis-server that is paused (the kernel accepts the connection, nobody
// answers: only the timeout can end the wait).
func TestFaultRedisUnreachableAtStart(t *testing.T) {
	const dialTimeout = time.Second
	t.Run("ClosedPort", func(t *testing.T) {
		port, err := brokertest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		checkUnreachable(t, redis.Config{Addr: fmt.Sprintf("127.0.0.1:%d", port), DialTimeout: dialTimeout}, dialTimeout)
	})
	t.Run("PausedServer", func(t *testing.T) {
		r := ownRedis(t)
		if err := r.Pause(); err != nil {
			t.Fatal(err)
		}
		defer r.Resume()
		checkUnreachable(t, redis.Config{Addr: r.Addr, DialTimeout: dialTimeout}, dialTimeout)
	})
}

// checkUnreachable builds an exchange that must fail with
// ErrBrokerUnavailable within bound, leaving no goroutine, and returns the
// error.
func checkUnreachable(t *testing.T, cfg redis.Config, bound time.Duration) error {
	t.Helper()
	before := runtime.NumGoroutine()
	start := time.Now()
	exc, err := redis.NewStackExchange(cfg, testChannel(t))
	took := time.Since(start)
	if err == nil {
		_ = exc.Close()
		t.Fatalf("NewStackExchange(%s) returned no error", cfg.Addr)
	}
	if !errors.Is(err, scaleout.ErrBrokerUnavailable) {
		t.Errorf("error %q does not wrap scaleout.ErrBrokerUnavailable", err)
	}
	if took > bound+timingSlack {
		t.Errorf("NewStackExchange took %v, bound %v", took, bound)
	}
	after := checkGoroutines(t, "after the failed NewStackExchange", before, 0)
	t.Logf("error after %v: %v; goroutines %d before, %d after", took.Round(time.Millisecond), err, before, after)
	return err
}
