package redis_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
	"github.com/neffos-contrib/scaleout/stackexchange/stackexchangetest"
)

// TestBroker runs the Broker contract (stackexchangetest.RunBroker) on a
// redis-server of the test's own: a batch Subscribe costs
// ceil(n/SubscribeChunk) SUBSCRIBE commands, as many UNSUBSCRIBEs, counted
// by the server (INFO commandstats).
func TestBroker(t *testing.T) {
	stackexchangetest.RunBroker(t, func(t *testing.T) stackexchangetest.BrokerFixture {
		r := ownRedis(t)
		client := goredis.NewClient(&goredis.Options{Addr: r.Addr})
		t.Cleanup(func() { _ = client.Close() })
		raw := rawClient(t, &goredis.Options{Addr: r.Addr})
		b, err := redis.NewBroker(client)
		if err != nil {
			t.Fatal(err)
		}
		return stackexchangetest.BrokerFixture{
			Broker: b,
			Publish: func(ctx context.Context, channel string, payload []byte) error {
				return raw.Publish(ctx, channel, payload).Err()
			},
			Channels: func(ctx context.Context, prefix string) ([]string, error) {
				return raw.PubSubChannels(ctx, prefix+".*").Result()
			},
			SubscribeCalls:   func() int { return commandCalls(t, raw)["subscribe"] },
			UnsubscribeCalls: func() int { return commandCalls(t, raw)["unsubscribe"] },
			RoundTrips:       func(n int) int { return (n + redis.SubscribeChunk - 1) / redis.SubscribeChunk },
		}
	})
}

// pubsubChannels returns PUBSUB CHANNELS pattern.
func pubsubChannels(t *testing.T, raw *goredis.Client, pattern string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	chans, err := raw.PubSubChannels(ctx, pattern).Result()
	if err != nil {
		t.Fatalf("PUBSUB CHANNELS: %v", err)
	}
	return chans
}

// commandCalls returns the calls of each command the server ran (INFO
// commandstats), by lower-case command name.
func commandCalls(t *testing.T, raw *goredis.Client) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := raw.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	calls := map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				calls[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.Atoi(v)
			}
		}
	}
	return calls
}

// TestBrokerSubscribeUnconfirmed: while Redis does not answer, a batch
// Subscribe returns at its ctx's deadline, and Close ends one still
// waiting with scaleout.ErrClosed; once Redis answers again a new batch is
// confirmed.
func TestBrokerSubscribeUnconfirmed(t *testing.T) {
	watchdog(t, 2*time.Minute)
	r := ownRedis(t)
	client := goredis.NewClient(&goredis.Options{Addr: r.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = client.Close() })
	raw := rawClient(t, &goredis.Options{Addr: r.Addr})
	prefix := testChannel(t)
	batch := func(tag string, n int) []string {
		chans := make([]string, n)
		for i := range chans {
			chans[i] = fmt.Sprintf("%s.%s.%d", prefix, tag, i)
		}
		return chans
	}

	b, err := redis.NewBroker(client)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(func(string, []byte) {}, func(error) {}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Subscribe(ctx, batch("a", 600)...); err != nil {
		t.Fatal(err)
	}

	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = r.Resume()
		}
	})
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	start := time.Now()
	err = b.Subscribe(short, batch("b", 600)...)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Subscribe while Redis is paused: err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Subscribe with a 300ms deadline returned after %v", d)
	}
	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true

	// Redis answers again (the pub/sub connection may have been replaced
	// meanwhile): a new batch is confirmed and counted.
	if err := b.Subscribe(ctx, batch("c", 600)...); err != nil {
		t.Fatalf("Subscribe after Redis resumed: %v", err)
	}
	if got := len(pubsubChannels(t, raw, prefix+".c.*")); got != 600 {
		t.Fatalf("PUBSUB CHANNELS counts %d of 600 channels after Subscribe returned", got)
	}

	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed = false
	done := make(chan error, 1)
	go func() { done <- b.Subscribe(ctx, batch("d", 600)...) }()
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, scaleout.ErrClosed) {
			t.Fatalf("Subscribe ended by Close: err = %v, want scaleout.ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not end a Subscribe waiting for Redis")
	}
}
