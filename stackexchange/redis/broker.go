package redis

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
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
	waiters  map[string][]chan struct{}
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
		waiters:  make(map[string][]chan struct{}),
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
		_ = ps.Subscribe(ctx, channels...)
		cancel()
	}
}

func (b *broker) confirm(channel string) {
	b.mu.Lock()
	ws := b.waiters[channel]
	delete(b.waiters, channel)
	b.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
}

func (b *broker) Subscribe(ctx context.Context, channels ...string) error {
	for _, channel := range channels {
		if err := b.subscribeOne(ctx, channel); err != nil {
			return err
		}
	}
	return nil
}

func (b *broker) subscribeOne(ctx context.Context, channel string) error {
	w := make(chan struct{})
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return scaleout.ErrClosed
	}
	b.channels[channel] = struct{}{}
	b.waiters[channel] = append(b.waiters[channel], w)
	ps := b.ps
	b.mu.Unlock()
	if err := ps.Subscribe(ctx, channel); err != nil {
		b.dropWaiter(channel, w)
		return err
	}
	select {
	case <-w:
		return nil
	case <-ctx.Done():
		b.dropWaiter(channel, w)
		return ctx.Err()
	}
}

func (b *broker) dropWaiter(channel string, w chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ws := b.waiters[channel]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(b.waiters, channel)
	} else {
		b.waiters[channel] = ws
	}
}

func (b *broker) Unsubscribe(ctx context.Context, channels ...string) error {
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
	return ps.Unsubscribe(ctx, channels...)
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
