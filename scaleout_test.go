package scaleout_test

import (
	"os"
	"sync"
	"testing"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/testkit"
	"github.com/neffos-contrib/scaleout/stackexchange/stackexchangetest"
)

func TestMain(m *testing.M) { os.Exit(testkit.LeakCheck(m.Run(), 0)) }

// TestConformanceMemory runs the suite on the in-process MemoryBroker: the
// engine's rules hold without any network broker.
func TestConformanceMemory(t *testing.T) {
	var mu sync.Mutex
	brokers := map[string]*scaleout.MemoryBroker{}
	stackexchangetest.Run(t, func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange {
		mu.Lock()
		defer mu.Unlock()
		mb := brokers[channel]
		if mb == nil {
			mb = scaleout.NewMemoryBroker()
			brokers[channel] = mb
		}
		return scaleout.New(mb.Broker(), channel, opts)
	})
}

func TestCloseIsIdempotentAndStopsCalls(t *testing.T) {
	exc := scaleout.New(scaleout.NewMemoryBroker().Broker(), "", scaleout.Options{})
	if err := exc.Init(neffos.Namespaces{"a": nil}); err != nil {
		t.Fatal(err)
	}
	if err := exc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := exc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if exc.Publish([]neffos.Message{{Namespace: "a", Event: "e"}}) {
		t.Error("Publish after Close reported success")
	}
	// Close before any use starts nothing.
	if err := scaleout.New(scaleout.NewMemoryBroker().Broker(), "", scaleout.Options{}).Close(); err != nil {
		t.Fatal(err)
	}
}
