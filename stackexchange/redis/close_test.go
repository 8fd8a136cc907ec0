package redis_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// TestCloseWithBrokerDown: Close returns, twice, and leaves no goroutine
// when the Redis server died under a started exchange.
func TestCloseWithBrokerDown(t *testing.T) {
	r, err := brokertest.StartRedis()
	if err != nil {
		brokertest.Missing(t, "redis-server", err.Error())
	}
	defer r.Stop()
	before := runtime.NumGoroutine()
	exc, err := redis.NewStackExchange(redis.Config{Addr: r.Addr, DialTimeout: time.Second}, "closedown")
	if err != nil {
		t.Fatal(err)
	}
	if err := exc.Init(neffos.Namespaces{"ns": nil}); err != nil {
		t.Fatal(err)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	exc.Publish([]neffos.Message{{Namespace: "ns", Event: "e"}}) // fails: the broker is gone
	done := make(chan error, 1)
	go func() { done <- exc.Close() }()
	select {
	case <-done: // an error from closing a dead connection is fine
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked with the broker down")
	}
	exc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("goroutines: %d before the exchange, %d after Close with the broker down", before, n)
	}
}
