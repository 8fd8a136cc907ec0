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
type broker struct {
	client  goredis.UniversalClient
	owned   bool
	name    string // CLIENT SETNAME of owned connections, for Conns
	cluster bool

	deliver func(string, []byte)
	report  func(error)

	mu       sync.Mutex
	ps       *goredis.PubSub
	channels map[string]struct{}
	waiters  map[string][]*batch
	closed   bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newBroker(client goredis.UniversalClient, owned bool, name string, cluster bool) *broker {
	ctx, cancel := context.WithCancel(context.Background())
	return &broker{
		client:   client,
		owned:    owned,
		name:     name,
		cluster:  cluster,
		channels: make(map[string]struct{}),
		waiters:  make(map[string][]*batch),
		ctx:      ctx,
		cancel:   cancel,
	}
}

func randomHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (b *broker) Start(deliver func(string, []byte), report func(error)) error {
	b.deliver, b.report = deliver, report
	b.mu.Lock()
	b.ps = b.client.Subscribe(b.ctx)
	b.mu.Unlock()
	b.wg.Add(1)
	go b.loop()
	return nil
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
					b.report(fmt.Errorf("scaleout/redis: pub/sub connection unresponsive, reconnecting"))
					b.recycle(ps)
					pinged = false
					continue
				}
				pinged = true
				_ = ps.Ping(b.ctx)
				continue
			}
			b.report(fmt.Errorf("scaleout/redis: pub/sub receive: %w", err))
			pinged = false
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

// recycle replaces a pub/sub connection that stopped answering with a new
// one subscribed to every channel.
func (b *broker) recycle(old *goredis.PubSub) {
	b.mu.Lock()
	if b.closed || b.ps != old {
		b.mu.Unlock()
		return
	}
	channels := make([]string, 0, len(b.channels))
	for ch := range b.channels {
		channels = append(channels, ch)
	}
	b.ps = b.client.Subscribe(b.ctx)
	ps := b.ps
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

func (b *broker) Publish(ctx context.Context, channel string, payload []byte) (int, error) {
	n, err := b.client.Publish(ctx, channel, payload).Result()
	if err != nil {
		return 0, rejected(err)
	}
	if b.cluster {
		return -1, nil // PUBLISH counts one cluster node's subscribers only.
	}
	return int(n), nil
}

func (b *broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	ps := b.ps
	b.mu.Unlock()
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

// Conns counts the connections named for this broker in CLIENT LIST.
func (b *broker) Conns(ctx context.Context) (int, error) {
	if b.name == "" {
		return 0, fmt.Errorf("scaleout/redis: connections of a user's client are not named: %w", errors.ErrUnsupported)
	}
	list, err := b.client.ClientList(ctx).Result()
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

// Subscribers returns PUBSUB NUMSUB channel.
func (b *broker) Subscribers(ctx context.Context, channel string) (int, error) {
	m, err := b.client.PubSubNumSub(ctx, channel).Result()
	if err != nil {
		return 0, err
	}
	return int(m[channel]), nil
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
	if b.cluster {
		for i, pub := range batch {
			if _, err := b.Publish(ctx, pub.Channel, pub.Payload); err != nil {
				return i, err
			}
		}
		return len(batch), nil
	}
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
