package stackexchangetest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/neffos-contrib/scaleout"
)

// BrokerFixture is what RunBroker checks a scaleout.Broker with: the broker
// under test, on a broker server of the test's own (so that the server's
// counts are the broker's alone), and a way to look at that server without
// going through the broker.
type BrokerFixture struct {
	// Broker is a new broker, not started, on the server. RunBroker starts
	// and closes it.
	Broker scaleout.Broker
	// Publish publishes payload on channel with a client of the test's
	// own.
	Publish func(ctx context.Context, channel string, payload []byte) error
	// Channels returns the channels named prefix + "." + anything on
	// which the server holds a subscription now.
	Channels func(ctx context.Context, prefix string) ([]string, error)
	// SubscribeCalls and UnsubscribeCalls return how many round trips the
	// broker's subscribes and unsubscribes cost so far (commands, or
	// flushes), as the server or the broker's connection counts them;
	// UnsubscribeCalls may be nil when the broker does not wait for
	// unsubscribes. RoundTrips is how many one call with n channels may
	// cost.
	SubscribeCalls, UnsubscribeCalls func() int
	RoundTrips                       func(n int) int
}

// BrokerFactory starts a broker server of the test's own and returns a
// BrokerFixture on it.
type BrokerFactory func(t *testing.T) BrokerFixture

// RunBroker checks the scaleout.Broker contract against the brokers f
// builds, for adapter authors. Each rule is a named subtest with a
// watchdog:
//
//   - Broker/BatchSubscribe: one Subscribe call with 2,000 channels (one of
//     them twice) costs RoundTrips(2000) round trips and returns once the
//     server holds every one of them; each delivers; one Unsubscribe call
//     drops them all; the broker still subscribes afterwards, and reports
//     no error.
//   - Broker/StartAfterClose: Start after Close fails with
//     scaleout.ErrClosed, and an engine on a broker it never started
//     closes at once, leaving no goroutine behind.
func RunBroker(t *testing.T, f BrokerFactory) {
	for _, r := range []struct {
		name string
		fn   func(*testing.T, BrokerFixture)
	}{
		{"Broker/BatchSubscribe", testBatchSubscribe},
		{"Broker/StartAfterClose", testStartAfterClose},
	} {
		t.Run(r.name, func(t *testing.T) {
			watchdog(t, 2*time.Minute)
			r.fn(t, f(t))
		})
	}
}

func testBatchSubscribe(t *testing.T, fx BrokerFixture) {
	const n = 2000
	prefix := uniqueChannel(t)
	channels := make([]string, n, n+1)
	for i := range channels {
		channels[i] = prefix + ".ch." + strconv.Itoa(i)
	}
	channels = append(channels, channels[0]) // a repeat counts once

	delivered := make(chan string, 64)
	var reports atomic.Int64
	b := fx.Broker
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
	held := func() []string {
		t.Helper()
		got, err := fx.Channels(ctx, prefix)
		if err != nil {
			t.Fatalf("asking the server for its channels: %v", err)
		}
		return got
	}
	before := fx.SubscribeCalls()
	start := time.Now()
	if err := b.Subscribe(ctx, channels...); err != nil {
		t.Fatalf("Subscribe of %d channels: %v", n, err)
	}
	t.Logf("Subscribe of %d channels in one call: %v", n, time.Since(start))
	if got, want := fx.SubscribeCalls()-before, fx.RoundTrips(n); got != want {
		t.Errorf("Subscribe of %d channels cost %d round trips, want %d", n, got, want)
	}
	// Subscribe returns after the server confirmed every channel, so it
	// counts them all now, without waiting.
	if got := len(held()); got != n {
		t.Fatalf("the server holds %d of the %d channels after Subscribe returned", got, n)
	}

	for i, ch := range []string{channels[0], channels[1], channels[n/2], channels[n-1]} {
		body := fmt.Sprintf("m%d", i)
		if err := fx.Publish(ctx, ch, []byte(body)); err != nil {
			t.Fatalf("publish on %s: %v", ch, err)
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

	before = 0
	if fx.UnsubscribeCalls != nil {
		before = fx.UnsubscribeCalls()
	}
	if err := b.Unsubscribe(ctx, channels[:n]...); err != nil {
		t.Fatalf("Unsubscribe of %d channels: %v", n, err)
	}
	// Unsubscribe need not wait for the server: poll until it has them all.
	var left int
	if !waitUntil(10*time.Second, func() bool {
		left = len(held())
		return left == 0
	}) {
		t.Fatalf("%d of %d channels still subscribed 10s after one Unsubscribe", left, n)
	}
	if fx.UnsubscribeCalls != nil {
		if got, want := fx.UnsubscribeCalls()-before, fx.RoundTrips(n); got != want {
			t.Errorf("Unsubscribe of %d channels cost %d round trips, want %d", n, got, want)
		}
	}

	// The broker still works after the batch: subscribe one again.
	if err := b.Subscribe(ctx, channels[7]); err != nil {
		t.Fatalf("Subscribe after the batch: %v", err)
	}
	if got := held(); !slices.Equal(got, []string{channels[7]}) {
		t.Fatalf("the server holds %v, want [%s]", got, channels[7])
	}
	if n := reports.Load(); n != 0 {
		t.Errorf("the broker reported %d errors", n)
	}
}

func testStartAfterClose(t *testing.T, fx BrokerFixture) {
	before := runtime.NumGoroutine()
	if err := fx.Broker.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fx.Broker.Start(func(string, []byte) {}, func(error) {}); !errors.Is(err, scaleout.ErrClosed) {
		t.Errorf("Start after Close: %v, want scaleout.ErrClosed", err)
	}
	done := make(chan error, 1)
	go func() { done <- scaleout.New(fx.Broker, "", scaleout.Options{}).Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close of an engine that never started: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close of an engine that never started hangs")
	}
	var now int
	if !waitUntil(10*time.Second, func() bool { now = runtime.NumGoroutine(); return now <= before }) {
		t.Errorf("%d goroutines after Close, %d before Start", now, before)
	}
}
