package nats_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/nats"
)

// TestCloseWithBrokerDown: Close returns, twice, and leaves no goroutine
// when the NATS server died under a started exchange (nats.go is
// reconnecting at that moment).
func TestCloseWithBrokerDown(t *testing.T) {
	n := brokertest.NewNATS(t)
	before := runtime.NumGoroutine()
	exc, err := nats.NewStackExchange(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := exc.Init(neffos.Namespaces{"ns": nil}); err != nil {
		t.Fatal(err)
	}
	_ = n.Kill()
	exc.Publish([]neffos.Message{{Namespace: "ns", Event: "e"}}) // fails: the broker is gone
	done := make(chan error, 1)
	go func() { done <- exc.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked with the broker down")
	}
	exc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	if got := runtime.NumGoroutine(); got > before {
		t.Errorf("goroutines: %d before the exchange, %d after Close with the broker down", before, got)
	}
}
