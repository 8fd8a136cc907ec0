package redis

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	goredis "github.com/go-redis/redis/v8"

	"github.com/neffos-contrib/scaleout"
)

// healthInterval is how long the receive loop waits for a message before it
// pings the pub/sub connection; a ping left unanswered for another interval
// marks the connection dead, and the broker opens a new one and subscribes
// every channel again.
const healthInterval = 2 * time.Second

// broker implements scaleout.Broker with one pub/sub connection (exact
// SUBSCRIBE, never PSUBSCRIBE) and the client's pool for PUBLISH.
//
// On a Redis Cluster (cluster != nil) every node accepts PUBLISH and the
// cluster bus copies it to every node, so any node serves any channel: the
// broker picks one master at random and publishes and subscribes there
// (MaxActive+1 connections, whatever the cluster's size). A PUBLISH that
// fails there goes through another master at once, which becomes the one
// it publishes to; a pub/sub connection that loses its node moves to
// another master.
//
// client is a *goredis.Client (also a Sentinel failover client, which
// follows the master by itself) or a *goredis.ClusterClient: NewBroker
// rejects other kinds.
type broker struct {
	client  goredis.UniversalClient
	owned   bool
	name    string   // CLIENT SETNAME of owned connections, for Conns
	cluster *masters // nil unless client is a *goredis.ClusterClient

	deliver func(string, []byte)
	report  func(error)

	mu       sync.Mutex
	ps       *goredis.PubSub
	psAddr   string // the node ps connects to, on a cluster
	channels map[string]struct{}
	waiters  map[string][]*batch
	closed   bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// newBroker returns a broker on client, which must be a *goredis.Client or
// a *goredis.ClusterClient (see checkClient).
func newBroker(client goredis.UniversalClient, owned bool, name string) *broker {
	ctx, cancel := context.WithCancel(context.Background())
	b := &broker{
		client:   client,
		owned:    owned,
		name:     name,
		channels: make(map[string]struct{}),
		waiters:  make(map[string][]*batch),
		cancel:   cancel,
	}
	b.ctx = tagged(ctx, b)
	if cc, ok := client.(*goredis.ClusterClient); ok {
		b.cluster = &masters{client: cc}
	}
	return b
}

// errUnsupportedClient is returned for a client kind the broker cannot
// subscribe with (a *goredis.Ring, which shards channels by key and
// refuses a subscription without channels, or another implementation of
// goredis.UniversalClient).
var errUnsupportedClient = fmt.Errorf("%w: scaleout/redis: unsupported client: use a *redis.Client (goredis.NewClient, or goredis.NewFailoverClient for Sentinel) or a *redis.ClusterClient (redis.NewClusterClient); to spread channels over several servers, use scaleout.Sharded with one NewBroker per server", scaleout.ErrInvalidConfig)

// errNilClient is returned for a nil client.
var errNilClient = fmt.Errorf("%w: scaleout/redis: nil client", scaleout.ErrInvalidConfig)

// checkClient rejects client kinds the broker does not support.
func checkClient(client goredis.UniversalClient) error {
	switch c := client.(type) {
	case *goredis.Client:
		if c == nil {
			return errNilClient
		}
		return nil
	case *goredis.ClusterClient:
		if c == nil {
			return errNilClient
		}
		return nil
	case nil:
		return errNilClient
	default:
		return fmt.Errorf("%w (got %T)", errUnsupportedClient, client)
	}
}

func randomHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (b *broker) Start(deliver func(string, []byte), report func(error)) error {
	b.deliver, b.report = deliver, report
	ps, addr := b.newPubSub("")
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		_ = ps.Close()
		return scaleout.ErrClosed
	}
	b.ps, b.psAddr = ps, addr
	addSink(b, report)
	b.wg.Add(1)
	go b.loop()
	return nil
}

// newPubSub returns a pub/sub connection (it connects on first use) and,
// on a cluster, the address of the node it connects to: the master it
// publishes to, or with avoid set a master other than avoid, at random. When the masters are unknown, it falls back to
// go-redis's cluster pub/sub, which picks the master of the first
// channel's slot.
func (b *broker) newPubSub(avoid string) (*goredis.PubSub, string) {
	if b.cluster == nil {
		return b.client.Subscribe(b.ctx), ""
	}
	ctx, cancel := context.WithTimeout(b.ctx, healthInterval)
	defer cancel()
	if avoid == "" {
		// Where it publishes: MaxActive+1 connections on one master.
		if h, err := b.cluster.home(ctx); err == nil {
			return h.Subscribe(b.ctx), h.Options().Addr
		}
	}
	list, err := b.cluster.get(ctx)
	if err != nil && b.report != nil {
		b.report(fmt.Errorf("%w: scaleout/redis: cluster masters: %w", scaleout.ErrBrokerUnavailable, err))
	}
	for _, c := range list {
		if addr := c.Options().Addr; addr != avoid || len(list) == 1 {
			return c.Subscribe(b.ctx), addr
		}
	}
	return b.client.Subscribe(b.ctx), ""
}

func (b *broker) pubsub() *goredis.PubSub {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ps
}

func (b *broker) loop() {
	defer b.wg.Done()
	backoff := 50 * time.Millisecond
	pinged := false
	for {
		ps := b.pubsub()
		msg, err := ps.ReceiveTimeout(b.ctx, healthInterval)
		if b.ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				if pinged {
					b.report(fmt.Errorf("%w: scaleout/redis: pub/sub connection unresponsive, reconnecting", scaleout.ErrBrokerUnavailable))
					b.recycle(ps, true)
					pinged = false
					continue
				}
				pinged = true
				_ = ps.Ping(b.ctx)
				continue
			}
			b.report(fmt.Errorf("%w: scaleout/redis: pub/sub receive: %w", scaleout.ErrBrokerUnavailable, clusterHint(err)))
			pinged = false
			if b.cluster != nil {
				// Its node may be gone for good: another master serves
				// every channel as well.
				b.recycle(ps, false)
			}
			select {
			case <-b.ctx.Done():
				return
			case <-time.After(backoff):
			}
			if backoff *= 2; backoff > 2*time.Second {
				backoff = 2 * time.Second
			}
			continue
		}
		backoff = 50 * time.Millisecond
		pinged = false
		switch m := msg.(type) {
		case *goredis.Message:
			b.deliver(m.Channel, []byte(m.Payload))
		case *goredis.Subscription:
			if m.Kind == "subscribe" {
				b.confirm(m.Channel)
			}
		}
	}
}

// recycle replaces a pub/sub connection that stopped answering (or, on a
// cluster, lost its node) with a new one subscribed to every channel. On a
// cluster the new one goes to another master; a connection that failed
// (!unresponsive) stays on its node when no other master is known.
func (b *broker) recycle(old *goredis.PubSub, unresponsive bool) {
	b.mu.Lock()
	if b.closed || b.ps != old {
		b.mu.Unlock()
		return
	}
	avoid := b.psAddr
	b.mu.Unlock()
	ps, addr := b.newPubSub(avoid)
	if !unresponsive && b.cluster != nil && addr == avoid {
		_ = ps.Close()
		return // the same node: old reconnects to it by itself
	}
	b.mu.Lock()
	if b.closed || b.ps != old {
		b.mu.Unlock()
		_ = ps.Close()
		return
	}
	channels := make([]string, 0, len(b.channels))
	for ch := range b.channels {
		channels = append(channels, ch)
	}
	b.ps, b.psAddr = ps, addr
	b.mu.Unlock()
	_ = old.Close()
	if len(channels) > 0 {
		ctx, cancel := context.WithTimeout(b.ctx, healthInterval)
		for chunk := range slices.Chunk(channels, subscribeChunk) {
			// Even a failed Subscribe records its channels in ps, which
			// subscribes them again when it reconnects: try every chunk.
			_ = ps.Subscribe(ctx, chunk...)
		}
		cancel()
	}
}

// confirm counts Redis's confirmation of channel against every Subscribe
// waiting for it.
func (b *broker) confirm(channel string) {
	b.mu.Lock()
	ws := b.waiters[channel]
	delete(b.waiters, channel)
	for _, w := range ws {
		if w.pending--; w.pending == 0 {
			close(w.done)
		}
	}
	b.mu.Unlock()
}

// subscribeChunk is how many channels one SUBSCRIBE or UNSUBSCRIBE command
// carries: a batch of thousands goes out as several commands written back
// to back, still one round trip, without building one huge command.
const subscribeChunk = 512

// batch is one Subscribe call waiting for Redis to confirm its channels.
type batch struct {
	pending int // channels not confirmed yet; guarded by broker.mu
	done    chan struct{}
}

// Subscribe implements scaleout.Broker: it registers one waiter for all
// channels, writes them in SUBSCRIBE commands of up to subscribeChunk
// channels each without waiting in between, and returns once the receive
// loop saw Redis confirm every one of them (or ctx is done, or the broker
// closes). The channels stay in the set that the pub/sub connection
// subscribes again when it reconnects, even when the call fails: the
// engine unsubscribes what it no longer wants.
func (b *broker) Subscribe(ctx context.Context, channels ...string) error {
	ctx = tagged(ctx, b)
	channels = unique(channels)
	if len(channels) == 0 {
		return nil
	}
	w := &batch{pending: len(channels), done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return scaleout.ErrClosed
	}
	for _, ch := range channels {
		b.channels[ch] = struct{}{}
		b.waiters[ch] = append(b.waiters[ch], w)
	}
	ps := b.ps
	b.mu.Unlock()
	var err error
	for chunk := range slices.Chunk(channels, subscribeChunk) {
		// After a failure the other chunks are still handed to ps (they
		// fail fast): ps records them even then, and subscribes them again
		// when it reconnects.
		if e := ps.Subscribe(ctx, chunk...); e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		b.dropWaiter(channels, w)
		if b.ctx.Err() != nil {
			return scaleout.ErrClosed // Close closed ps under the call
		}
		return err
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		b.dropWaiter(channels, w)
		return ctx.Err()
	case <-b.ctx.Done():
		b.dropWaiter(channels, w)
		return scaleout.ErrClosed
	}
}

// unique returns channels without repeats, in their first order. It
// returns channels itself when there are none.
func unique(channels []string) []string {
	seen := make(map[string]struct{}, len(channels))
	out := channels[:0:0]
	for _, ch := range channels {
		if _, ok := seen[ch]; !ok {
			seen[ch] = struct{}{}
			out = append(out, ch)
		}
	}
	return out
}

// dropWaiter removes w from the waiters of every channel it still waits
// for.
func (b *broker) dropWaiter(channels []string, w *batch) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, ch := range channels {
		ws := b.waiters[ch]
		if i := slices.Index(ws, w); i >= 0 {
			ws = slices.Delete(ws, i, i+1)
		}
		if len(ws) == 0 {
			delete(b.waiters, ch)
		} else {
			b.waiters[ch] = ws
		}
	}
}

// Unsubscribe implements scaleout.Broker: UNSUBSCRIBE commands of up to
// subscribeChunk channels each, written back to back. It does not wait for
// Redis's confirmations.
func (b *broker) Unsubscribe(ctx context.Context, channels ...string) error {
	if len(channels) == 0 {
		return nil // an UNSUBSCRIBE without channels would drop them all
	}
	ctx = tagged(ctx, b)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	for _, channel := range channels {
		delete(b.channels, channel)
	}
	ps := b.ps
	b.mu.Unlock()
	for chunk := range slices.Chunk(channels, subscribeChunk) {
		if err := ps.Unsubscribe(ctx, chunk...); err != nil {
			return err
		}
	}
	return nil
}

// Publish implements scaleout.Broker. On a cluster it returns -1 (PUBLISH
// counts one node's subscribers only), and a PUBLISH that fails on the
// master it publishes to, other than by an error reply that a retry cannot
// change, goes through another master at once.
//
// On a cluster it publishes through a master's own client, not through the
// ClusterClient: go-redis v8 cannot parse Redis 7's COMMAND reply either,
// and its ClusterClient asks for it again (a large reply from every node
// in turn) before every command it runs.
func (b *broker) Publish(ctx context.Context, channel string, payload []byte) (int, error) {
	ctx = tagged(ctx, b)
	if b.cluster == nil {
		n, err := b.client.Publish(ctx, channel, payload).Result()
		if err != nil {
			return 0, rejected(err)
		}
		return int(n), nil
	}
	if err := b.cluster.publish(ctx, channel, payload, false); err != nil {
		return 0, rejected(clusterHint(err))
	}
	return -1, nil
}

// ping checks that Redis answers: the client's server, or on a cluster
// the master the broker publishes to (another one, which becomes the one it
// publishes to, when that one does not answer).
func (b *broker) ping(ctx context.Context) error {
	if b.cluster == nil {
		return b.client.Ping(ctx).Err()
	}
	return b.cluster.publish(ctx, "", nil, true)
}

// Close implements scaleout.Broker: it stops the receive loop, closes the
// pub/sub connection and, when the broker opened it, the client. Later
// calls do nothing.
func (b *broker) Close() error {
	b.mu.Lock()
	already := b.closed
	b.closed = true
	ps := b.ps
	b.mu.Unlock()
	if already {
		return nil
	}
	removeSink(b)
	b.cancel()
	var err error
	if ps != nil {
		_ = ps.Close()
		b.wg.Wait()
	}
	if b.owned {
		err = b.client.Close()
	}
	return err
}

// eachNode runs fn on the client, or on a cluster on every node (masters
// and replicas), and sums the results. On a cluster each node is asked on
// a connection of its own, unnamed and closed afterwards, so that asking
// does not add connections of the broker's to the nodes it does not use.
func (b *broker) eachNode(ctx context.Context, fn func(context.Context, goredis.Cmdable) (int, error)) (int, error) {
	ctx = tagged(ctx, b)
	cc, ok := b.client.(*goredis.ClusterClient)
	if !ok {
		return fn(ctx, b.client)
	}
	var mu sync.Mutex
	var addrs []string
	err := cc.ForEachShard(ctx, func(_ context.Context, c *goredis.Client) error {
		mu.Lock()
		addrs = append(addrs, c.Options().Addr)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return 0, clusterHint(err)
	}
	opt := newSlotsReader(cc.Options()).opt
	total := 0
	for _, addr := range addrs {
		o := opt
		o.Addr = addr
		c := goredis.NewClient(&o)
		n, err := fn(ctx, c)
		c.Close()
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// Conns counts the connections named for this broker in CLIENT LIST (of
// every node, on a cluster).
func (b *broker) Conns(ctx context.Context) (int, error) {
	if b.name == "" {
		return 0, fmt.Errorf("scaleout/redis: connections of a user's client are not named: %w", errors.ErrUnsupported)
	}
	return b.eachNode(ctx, b.countNamed)
}

func (b *broker) countNamed(ctx context.Context, c goredis.Cmdable) (int, error) {
	list, err := c.ClientList(ctx).Result()
	if err != nil {
		return 0, err
	}
	n := 0
	sc := bufio.NewScanner(strings.NewReader(list))
	for sc.Scan() {
		for _, f := range strings.Fields(sc.Text()) {
			if f == "name="+b.name {
				n++
			}
		}
	}
	return n, nil
}

// Subscribers returns PUBSUB NUMSUB channel (summed over every node, on a
// cluster: each node counts its own connections' subscriptions).
func (b *broker) Subscribers(ctx context.Context, channel string) (int, error) {
	return b.eachNode(ctx, func(ctx context.Context, c goredis.Cmdable) (int, error) {
		m, err := c.PubSubNumSub(ctx, channel).Result()
		if err != nil {
			return 0, err
		}
		return int(m[channel]), nil
	})
}

var _ scaleout.BrokerInspector = (*broker)(nil)

// rejected wraps scaleout.ErrRejected around an error reply of the server
// that a retry cannot change (NOPERM, WRONGTYPE, ...), so the engine does
// not retry it. Replies of a server in transition (LOADING, READONLY during
// a failover, CLUSTERDOWN, TRYAGAIN, MASTERDOWN) and network errors are left
// as they are: retried until PublishTimeout.
func rejected(err error) error {
	var reply goredis.Error
	if !errors.As(err, &reply) {
		return err
	}
	for _, transient := range []string{"LOADING", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN"} {
		if strings.HasPrefix(err.Error(), transient) {
			return err
		}
	}
	return fmt.Errorf("%w: %w", scaleout.ErrRejected, err)
}

// PublishBatch implements scaleout.BatchPublisher: one pipeline of PUBLISH
// commands, one round trip, on one pooled connection. A Redis Cluster gets
// one Publish per message instead (a PUBLISH goes to any node, which
// broadcasts it over the cluster bus).
func (b *broker) PublishBatch(ctx context.Context, batch []scaleout.Publication) (int, error) {
	if b.cluster != nil {
		for i, pub := range batch {
			if _, err := b.Publish(ctx, pub.Channel, pub.Payload); err != nil {
				return i, err
			}
		}
		return len(batch), nil
	}
	ctx = tagged(ctx, b)
	cmds, err := b.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, pub := range batch {
			p.Publish(ctx, pub.Channel, pub.Payload)
		}
		return nil
	})
	if err == nil {
		return len(batch), nil
	}
	for i, cmd := range cmds {
		if cerr := cmd.Err(); cerr != nil {
			return i, rejected(cerr)
		}
	}
	return 0, err
}
