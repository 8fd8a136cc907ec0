package stackexchangetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout"
)

// sentinels are the errors every error of a scaleout exchange wraps
// (scaleout's errors.go).
var sentinels = []error{
	scaleout.ErrClosed, scaleout.ErrPublish, scaleout.ErrSubscribe, scaleout.ErrConnNotFound,
	scaleout.ErrMalformed, scaleout.ErrSlowConsumer, scaleout.ErrBrokerUnavailable,
	scaleout.ErrRejected, scaleout.ErrMissed, scaleout.ErrInvalidConfig,
}

// WrapsSentinel reports whether err wraps one of the scaleout package's
// sentinel errors, as every error a scaleout exchange returns or reports
// does: for adapter authors' tests of their constructors' and brokers'
// errors.
func WrapsSentinel(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// testErrorSentinels checks the error contract on exchanges that are
// scaleout.StackExchanges: an Ask to nobody, a reply with a foreign wait
// token, calls after Close and Close twice return errors that wrap the
// documented sentinels, and so does everything reported to ErrorHandler
// meanwhile.
func testErrorSentinels(t *testing.T, f Factory) {
	var mu sync.Mutex
	var reported []error
	cl := newClusterOpts(t, f, 2, []string{ns}, false, func(*node) scaleout.Options {
		return scaleout.Options{ErrorHandler: func(err error) {
			mu.Lock()
			reported = append(reported, err)
			mu.Unlock()
		}}
	})
	exc, ok := cl.nodes[0].exc.(scaleout.StackExchange)
	if !ok {
		t.Skip("not a scaleout.StackExchange: its errors are its own")
	}
	c := cl.dial("c", 1, ns)
	cl.barrier(ns, c)

	if _, err := ask(t, cl.nodes[0].srv, time.Minute, neffos.Message{Namespace: ns, Event: evQuestion, To: "nobody"}); !errors.Is(err, scaleout.ErrConnNotFound) {
		t.Errorf("Ask to a connection no node holds: err = %v, want scaleout.ErrConnNotFound", err)
	}
	if err := exc.NotifyAsk(neffos.Message{Namespace: ns, Event: evQuestion}, "not-a-token-of-ours"); !errors.Is(err, scaleout.ErrMalformed) {
		t.Errorf("NotifyAsk with a foreign token: err = %v, want scaleout.ErrMalformed", err)
	}

	first := exc.Close()
	if first != nil && !WrapsSentinel(first) {
		t.Errorf("Close: %v wraps no scaleout sentinel", first)
	}
	if second := exc.Close(); second != first {
		t.Errorf("second Close = %v, want the first's result %v", second, first)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := exc.Ask(ctx, neffos.Message{Namespace: ns, Event: evQuestion, To: c.id}, ""); !errors.Is(err, scaleout.ErrClosed) {
		t.Errorf("Ask after Close: err = %v, want scaleout.ErrClosed", err)
	}
	if exc.Publish([]neffos.Message{{Namespace: ns, Event: evMsg, Body: []byte("after close")}}) {
		t.Error("Publish after Close returned true")
	}

	mu.Lock()
	defer mu.Unlock()
	for _, err := range reported {
		if !WrapsSentinel(err) {
			t.Errorf("reported error %q wraps no scaleout sentinel", err)
		}
	}
}

// UseAndClose registers exc the way neffos's documentation shows
// (server.UseStackExchange right after neffos.New), closes the server,
// then the exchange when it has a Close() error method, and fails t on any
// error: for adapters' tests of their drop-in constructors.
func UseAndClose(t testing.TB, exc neffos.StackExchange) {
	t.Helper()
	server := neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{"default": neffos.Events{}})
	if err := server.UseStackExchange(exc); err != nil {
		t.Fatal(err)
	}
	server.Close()
	if c, ok := exc.(interface{ Close() error }); ok {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
