package scaleout

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// memNodes gives each of n nodes its own endpoint on each of the shared
// in-process brokers mbs.
func memNodes(mbs []*MemoryBroker, n int) [][]Broker {
	nodes := make([][]Broker, n)
	for i := range nodes {
		for _, mb := range mbs {
			nodes[i] = append(nodes[i], mb.Broker())
		}
	}
	return nodes
}

type inbox struct {
	mu  sync.Mutex
	got map[string]int
}

func (in *inbox) deliver(channel string, _ []byte) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.got[channel]++
}

// TestShardedRouting: every channel lives on exactly one shard, the same on
// every node; a publish reaches its subscribers once; the shards share the
// channels.
func TestShardedRouting(t *testing.T) {
	mbs := []*MemoryBroker{NewMemoryBroker(), NewMemoryBroker(), NewMemoryBroker()}
	nodes := memNodes(mbs, 2)
	pub, sub := Sharded(nodes[0]...), Sharded(nodes[1]...)
	in := &inbox{got: map[string]int{}}
	for _, b := range []Broker{pub, sub} {
		if err := b.Start(in.deliver, func(err error) { t.Error(err) }); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
	}
	ctx := context.Background()
	var channels []string
	for i := range 300 {
		channels = append(channels, fmt.Sprintf("app.c.client-%d", i))
	}
	if err := sub.Subscribe(ctx, channels...); err != nil {
		t.Fatal(err)
	}
	perShard := make([]int, len(mbs))
	for _, ch := range channels {
		n, err := pub.Publish(ctx, ch, []byte("x"))
		if err != nil || n != 1 {
			t.Fatalf("publish %s: %d receivers, %v", ch, n, err)
		}
		on := 0
		for i, mb := range mbs {
			if c, _ := mb.Broker().(BrokerInspector).Subscribers(ctx, ch); c > 0 {
				perShard[i]++
				on++
			}
		}
		if on != 1 {
			t.Fatalf("%s is subscribed on %d shards, want 1", ch, on)
		}
	}
	for _, ch := range channels {
		if in.got[ch] != 1 {
			t.Fatalf("%s delivered %d times, want 1", ch, in.got[ch])
		}
	}
	for i, n := range perShard {
		if n < 60 { // 100 expected; a hash that favours one shard fails this
			t.Errorf("shard %d holds %d of 300 channels: %v", i, n, perShard)
		}
	}
	if err := sub.Unsubscribe(ctx, channels...); err != nil {
		t.Fatal(err)
	}
	if n, _ := pub.Publish(ctx, channels[0], nil); n != 0 {
		t.Errorf("after Unsubscribe: %d receivers", n)
	}
}

// TestRedundantCopies: a publish reaches a subscriber once per broker (the
// engine drops the copies by sequence number), and still reaches it when
// one broker is closed.
func TestRedundantCopies(t *testing.T) {
	mbs := []*MemoryBroker{NewMemoryBroker(), NewMemoryBroker()}
	nodes := memNodes(mbs, 2)
	pub, sub := Redundant(nodes[0]...), Redundant(nodes[1]...)
	in := &inbox{got: map[string]int{}}
	for _, b := range []Broker{pub, sub} {
		if err := b.Start(in.deliver, func(error) {}); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
	}
	ctx := context.Background()
	if err := sub.Subscribe(ctx, "ch"); err != nil {
		t.Fatal(err)
	}
	if n, err := pub.Publish(ctx, "ch", nil); err != nil || n != 1 {
		t.Fatalf("publish: %d, %v", n, err)
	}
	if in.got["ch"] != 2 {
		t.Fatalf("delivered %d times, want once per broker (2)", in.got["ch"])
	}
	_ = nodes[1][0].Close() // the subscriber loses one broker
	if n, err := pub.Publish(ctx, "ch", nil); err != nil || n != 1 {
		t.Fatalf("publish with one broker gone: %d, %v", n, err)
	}
	if in.got["ch"] != 3 {
		t.Errorf("with one broker gone: delivered %d times in all, want 3", in.got["ch"])
	}
}
