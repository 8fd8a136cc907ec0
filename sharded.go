package scaleout

import (
	"context"
	"errors"
	"hash/fnv"
	"strconv"
)

// Sharded returns a Broker that spreads the engine's channels over several
// independent brokers (several Redis servers, say): each channel, be it a
// namespace's, a node's or a client's, lives on one shard, chosen by
// rendezvous hashing of its name, so pub/sub throughput grows with the
// shards (Redis Cluster, by contrast, copies every PUBLISH to every node).
// Every node of the app must list the same shards in the same order.
//
//	exc := scaleout.New(scaleout.Sharded(redis.NewBroker(r1), redis.NewBroker(r2), redis.NewBroker(r3)), "", scaleout.Options{})
//
// Cost: a publish goes to its channel's shard only (one publish per
// message, as with one broker); each shard holds its own connections (one
// pub/sub connection per shard per node for Redis). Losing one shard
// affects only the channels on it: their messages fail to publish (counted
// and reported), everything else flows. Adding a shard moves about 1/n of
// the channels. The Broker owns shards: Close closes all of them.
func Sharded(shards ...Broker) Broker { return &sharded{brokerSet(shards)} }

type sharded struct{ brokerSet }

var (
	_ CountingPublisher = (*sharded)(nil)
	_ BrokerInspector   = (*sharded)(nil)
)

// shard returns the index of channel's shard: the one whose hash with the
// channel's name is the largest.
func (s *sharded) shard(channel string) int {
	best, bestScore := 0, uint64(0)
	for i := range s.brokerSet {
		h := fnv.New64a()
		h.Write([]byte(channel))
		h.Write([]byte{0})
		h.Write(strconv.AppendInt(nil, int64(i), 10))
		if score := h.Sum64(); i == 0 || score > bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

// split groups channels by shard.
func (s *sharded) split(channels []string) [][]string {
	groups := make([][]string, len(s.brokerSet))
	for _, ch := range channels {
		i := s.shard(ch)
		groups[i] = append(groups[i], ch)
	}
	return groups
}

// Subscribe subscribes each shard's channels on it, the shards in
// parallel; it fails when one shard failed (that shard subscribes its
// channels again when it comes back).
func (s *sharded) Subscribe(ctx context.Context, channels ...string) error {
	return s.each(channels, func(b Broker, group []string) error { return b.Subscribe(ctx, group...) })
}

func (s *sharded) Unsubscribe(ctx context.Context, channels ...string) error {
	return s.each(channels, func(b Broker, group []string) error { return b.Unsubscribe(ctx, group...) })
}

// each runs fn, in parallel, on every shard that has some of channels.
func (s *sharded) each(channels []string, fn func(Broker, []string) error) error {
	groups := s.split(channels)
	return errors.Join(s.all(func(i int, b Broker) error {
		if len(groups[i]) == 0 {
			return nil
		}
		return fn(b, groups[i])
	})...)
}

func (s *sharded) Publish(ctx context.Context, channel string, payload []byte) (int, error) {
	return publishOn(ctx, s.brokerSet[s.shard(channel)], false, channel, payload)
}

// PublishCounted counts on the channel's shard when it can.
func (s *sharded) PublishCounted(ctx context.Context, channel string, payload []byte) (int, error) {
	return publishOn(ctx, s.brokerSet[s.shard(channel)], true, channel, payload)
}

// Subscribers asks the channel's shard.
func (s *sharded) Subscribers(ctx context.Context, channel string) (int, error) {
	return subscribers(ctx, s.brokerSet[s.shard(channel)], channel)
}
