package stackexchangetest_test

import (
	"fmt"
	"testing"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/stackexchange/stackexchangetest"
)

// A Factory for exchanges on the in-process MemoryBroker: nodes built with
// the same channel share one broker. Pass it to Run from a test function:
// stackexchangetest.Run(t, factory).
func ExampleFactory() {
	brokers := map[string]*scaleout.MemoryBroker{}
	var factory stackexchangetest.Factory = func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange {
		if brokers[channel] == nil {
			brokers[channel] = scaleout.NewMemoryBroker()
		}
		return scaleout.New(brokers[channel].Broker(), channel, opts) // opts carries what a rule needs
	}
	// Run calls it once per node; here, by hand, for two nodes of one app.
	a := factory(nil, "app", scaleout.Options{}).(scaleout.StackExchange)
	b := factory(nil, "app", scaleout.Options{}).(scaleout.StackExchange)
	defer a.Close()
	defer b.Close()
	fmt.Println("nodes share a broker:", len(brokers) == 1)
	// Output: nodes share a broker: true
}
