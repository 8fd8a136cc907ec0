package redis_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// TestBrokerBatchSubscribe: one Subscribe call with thousands of channels
// returns once Redis holds every one of them, in ceil(n/SubscribeChunk)
// SUBSCRIBE commands; one Unsubscribe call drops them all, in as few
// UNSUBSCRIBE commands. The test owns its redis-server, so the server's
// command counts are the broker's alone.
func TestBrokerBatchSubscribe(t *testing.T) {
	watchdog(t, 2*time.Minute)
	r := ownRedis(t)
	client := goredis.NewClient(&goredis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = client.Close() })
	raw := rawClient(t, &goredis.Options{Addr: r.Addr})

	const n = 2000
	prefix := testChannel(t)
	channels := make([]string, n, n+1)
	for i := range channels {
		channels[i] = prefix + ".ch." + strconv.Itoa(i)
	}
	channels = append(channels, channels[0]) // a repeat counts once

	delivered := make(chan string, 64)
	var reports atomic.Int64
	b, err := redis.NewBroker(client)
	if err != nil {
		t.Fatal(err)
	}
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
	before := commandCalls(t, raw)
	start := time.Now()
	if err := b.Subscribe(ctx, channels...); err != nil {
		t.Fatalf("Subscribe of %d channels: %v", n, err)
	}
	t.Logf("Subscribe of %d channels in one call: %v", n, time.Since(start))

	// Subscribe returned after Redis confirmed each channel, so Redis
	// counts them all now, without waiting.
	if got := len(pubsubChannels(t, raw, prefix+".ch.*")); got != n {
		t.Fatalf("PUBSUB CHANNELS counts %d of the %d channels after Subscribe returned", got, n)
	}
	sample := []string{channels[0], channels[1], channels[n/2], channels[n-1]}
	counts, err := raw.PubSubNumSub(ctx, sample...).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range sample {
		if counts[ch] != 1 {
			t.Errorf("PUBSUB NUMSUB %s = %d, want 1", ch, counts[ch])
		}
	}
	after := commandCalls(t, raw)
	wantCmds := (n + redis.SubscribeChunk - 1) / redis.SubscribeChunk
	if got := after["subscribe"] - before["subscribe"]; got != wantCmds {
		t.Errorf("%d SUBSCRIBE commands for %d channels, want %d (chunks of %d)", got, n, wantCmds, redis.SubscribeChunk)
	}

	// Each sampled channel delivers.
	for i, ch := range sample {
		body := fmt.Sprintf("m%d", i)
		if rcv, err := raw.Publish(ctx, ch, body).Result(); err != nil || rcv != 1 {
			t.Fatalf("PUBLISH %s: %d receivers, %v; want 1", ch, rcv, err)
		}
		select {
		case got := <-delivered:
			if got != ch+"="+body {
				t.Fatalf("delivered %q, want %q", got, ch+"="+body)
			}
		case <-ctx.Done():
			t.Fatalf("PUBLISH on %s never delivered", ch)
		}
	}

	before = commandCalls(t, raw)
	if err := b.Unsubscribe(ctx, channels[:n]...); err != nil {
		t.Fatalf("Unsubscribe of %d channels: %v", n, err)
	}
	// Unsubscribe does not wait for Redis: poll until it has them all.
	var left int
	if !waitUntil(10*time.Second, func() bool {
		left = len(pubsubChannels(t, raw, prefix+".ch.*"))
		return left == 0
	}) {
		t.Fatalf("%d of %d channels still subscribed 10s after one Unsubscribe", left, n)
	}
	after = commandCalls(t, raw)
	if got := after["unsubscribe"] - before["unsubscribe"]; got != wantCmds {
		t.Errorf("%d UNSUBSCRIBE commands for %d channels, want %d", got, n, wantCmds)
	}

	// The broker still works after the batch: subscribe one again.
	if err := b.Subscribe(ctx, channels[7]); err != nil {
		t.Fatalf("Subscribe after the batch: %v", err)
	}
	if got := pubsubChannels(t, raw, prefix+".ch.*"); len(got) != 1 || got[0] != channels[7] {
		t.Fatalf("PUBSUB CHANNELS = %v, want [%s]", got, channels[7])
	}
	if n := reports.Load(); n != 0 {
		t.Errorf("the broker reported %d errors", n)
	}
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
