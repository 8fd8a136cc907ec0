package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout"
)

// inboxSize is how many received messages may wait for the engine. The
// engine's deliver does bounded local work, so the buffer only absorbs
// bursts; when it is full nats.go drops the message and reports
// nats.ErrSlowConsumer for its subscription (reported through the engine).
const inboxSize = 1 << 16

// flushTimeout bounds a subscribe's round trip when the caller's context
// has no deadline (nats.go requires one).
const flushTimeout = 5 * time.Second

// broker implements scaleout.Broker on one nats.Conn. Every subscription is
// a ChanSubscribe into one channel drained by one goroutine: nats.go starts
// no goroutine per subscription, messages are delivered in the order the
// connection read them, and Close can wait for the last deliver.
type broker struct {
	nc    *nats.Conn
	owned bool
	name  string // connection name, for Conns; "" counts by client id

	msgs chan *nats.Msg
	done chan struct{}
	wg   sync.WaitGroup

	deliver func(string, []byte)
	report  atomic.Pointer[func(error)]
	closing atomic.Bool

	mu      sync.Mutex
	subs    map[string]*nats.Subscription
	closed  bool
	monitor string
	httpc   *http.Client
}

func newBroker(owned bool) *broker {
	return &broker{
		owned: owned,
		msgs:  make(chan *nats.Msg, inboxSize),
		done:  make(chan struct{}),
		subs:  make(map[string]*nats.Subscription),
		httpc: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
	}
}

// hookOptions chains the broker's reports after the handlers in opts, for a
// connection the broker is about to open.
func (b *broker) hookOptions(opts *nats.Options) {
	b.name = opts.Name
	userErr := opts.AsyncErrorCB
	opts.AsyncErrorCB = func(nc *nats.Conn, sub *nats.Subscription, err error) {
		if userErr != nil {
			userErr(nc, sub, err)
		}
		b.asyncError(sub, err)
	}
	userDisc, legacyDisc := opts.DisconnectedErrCB, opts.DisconnectedCB
	opts.DisconnectedErrCB = func(nc *nats.Conn, err error) {
		if userDisc != nil {
			userDisc(nc, err)
		} else if legacyDisc != nil {
			legacyDisc(nc) // nats.go calls it only when DisconnectedErrCB is nil.
		}
		b.disconnected(err)
	}
	userClosed := opts.ClosedCB
	opts.ClosedCB = func(nc *nats.Conn) {
		if userClosed != nil {
			userClosed(nc)
		}
		b.connClosed(nc)
	}
}

// hookConn chains the broker's reports after the handlers of the user's
// connection nc.
func (b *broker) hookConn(nc *nats.Conn) {
	b.name = nc.Opts.Name
	userErr := nc.ErrorHandler()
	nc.SetErrorHandler(func(c *nats.Conn, sub *nats.Subscription, err error) {
		if userErr != nil {
			userErr(c, sub, err)
		}
		if sub != nil && b.ours(sub) {
			b.asyncError(sub, err)
		}
	})
	userDisc, legacyDisc := nc.DisconnectErrHandler(), nc.Opts.DisconnectedCB
	nc.SetDisconnectErrHandler(func(c *nats.Conn, err error) {
		if userDisc != nil {
			userDisc(c, err)
		} else if legacyDisc != nil {
			legacyDisc(c)
		}
		b.disconnected(err)
	})
	userClosed := nc.ClosedHandler()
	nc.SetClosedHandler(func(c *nats.Conn) {
		if userClosed != nil {
			userClosed(c)
		}
		b.connClosed(c)
	})
}

func (b *broker) reportErr(err error) {
	if b.closing.Load() {
		return
	}
	if f := b.report.Load(); f != nil {
		(*f)(err)
	}
}

// asyncError reports nats.go's asynchronous errors: one on a subscription
// (a slow consumer, a permission denied) wraps scaleout.ErrSubscribe, any
// other scaleout.ErrBrokerUnavailable.
func (b *broker) asyncError(sub *nats.Subscription, err error) {
	if sub != nil {
		b.reportErr(fmt.Errorf("%w: scaleout/nats: subject %s: %w", scaleout.ErrSubscribe, sub.Subject, err))
		return
	}
	b.reportErr(fmt.Errorf("%w: scaleout/nats: %w", scaleout.ErrBrokerUnavailable, err))
}

func (b *broker) disconnected(err error) {
	if err == nil {
		return // closed on purpose
	}
	b.reportErr(fmt.Errorf("%w: nats connection lost, reconnecting: %w", scaleout.ErrBrokerUnavailable, err))
}

func (b *broker) connClosed(nc *nats.Conn) {
	err := nc.LastError()
	if err == nil {
		err = nats.ErrConnectionClosed
	}
	b.reportErr(fmt.Errorf("%w: nats connection closed for good: %w", scaleout.ErrBrokerUnavailable, err))
}

func (b *broker) ours(sub *nats.Subscription) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs[sub.Subject] == sub
}

func (b *broker) setMonitorURL(u string) {
	b.mu.Lock()
	b.monitor = strings.TrimRight(u, "/")
	b.mu.Unlock()
}

// Start implements scaleout.Broker.
func (b *broker) Start(deliver func(string, []byte), report func(error)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return scaleout.ErrClosed
	}
	b.deliver = deliver
	b.report.Store(&report)
	b.wg.Add(1)
	go b.loop()
	return nil
}

func (b *broker) loop() {
	defer b.wg.Done()
	for {
		select {
		case <-b.done:
			return
		case m := <-b.msgs:
			if m.Reply != "" {
				// A counted publish (see Publish): ack before delivering.
				_ = m.Respond(nil)
			}
			b.deliver(m.Subject, m.Data)
		}
	}
}

// Subscribe implements scaleout.Broker: a SUB for each new channel, all
// appended to the shared connection's write buffer under the broker's
// lock, then one PING/PONG round trip (FlushWithContext) for the whole
// batch, so it returns once the server has every one. While the
// connection is down the SUBs wait in nats.go's reconnect buffer and
// Subscribe returns ctx's error; nats.go subscribes them again on every
// reconnect. When nats.go refuses a SUB, the subscriptions this call made
// are removed again and the error returned.
func (b *broker) Subscribe(ctx context.Context, channels ...string) error {
	if len(channels) == 0 {
		return nil
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return scaleout.ErrClosed
	}
	var added []*nats.Subscription
	for _, channel := range channels {
		if _, ok := b.subs[channel]; ok {
			continue
		}
		sub, err := b.nc.ChanSubscribe(channel, b.msgs)
		if err != nil {
			for _, s := range added {
				delete(b.subs, s.Subject)
				_ = s.Unsubscribe()
			}
			b.mu.Unlock()
			return fmt.Errorf("scaleout/nats: subscribe %s: %w", channel, err)
		}
		b.subs[channel] = sub
		added = append(added, sub)
	}
	b.mu.Unlock()
	// Flushed even when every channel was held already: a SUB another
	// call wrote may not have reached the server yet.
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, flushTimeout)
		defer cancel()
	}
	if err := b.nc.FlushWithContext(ctx); err != nil {
		return err
	}
	if b.nc.ConnectedClusterName() != "" {
		// In a cluster the flush confirms the subscription on this server
		// only; the others learn of it over their routes a moment later,
		// and a message published through them meanwhile misses it. Give
		// the routes that moment (a nats.go API that confirms interest
		// cluster-wide does not exist).
		t := time.NewTimer(clusterSettle)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return nil
}

// clusterSettle is how long Subscribe waits after its flush when the
// server is part of a cluster.
const clusterSettle = 100 * time.Millisecond

// Unsubscribe implements scaleout.Broker: an UNSUB for each channel into
// the connection's write buffer. It does not wait for the server. It tries
// every channel and returns the first error.
func (b *broker) Unsubscribe(_ context.Context, channels ...string) error {
	b.mu.Lock()
	var subs []*nats.Subscription
	for _, channel := range channels {
		if sub := b.subs[channel]; sub != nil {
			subs = append(subs, sub)
			delete(b.subs, channel)
		}
	}
	b.mu.Unlock()
	var first error
	for _, sub := range subs {
		if err := sub.Unsubscribe(); err != nil && first == nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			first = err
		}
	}
	return first
}

// Publish implements scaleout.Broker with a plain NATS publish. It returns
// -1: core NATS does not tell a publisher how many subscribers got a
// message. nc.Publish only appends to the connection's write buffer, so it
// does not block on the network. While the connection is down Publish
// fails at once (nats.ErrDisconnected) rather than filling nats.go's
// reconnect buffer: the engine then reports the failure and Publish returns
// false, as the scaleout contract says. Messages on a client's subject (To,
// Asks) go through PublishCounted instead.
func (b *broker) Publish(ctx context.Context, channel string, payload []byte) (int, error) {
	if b.closing.Load() {
		return 0, scaleout.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if !b.nc.IsConnected() {
		return 0, fmt.Errorf("scaleout/nats: %w (status %v)", nats.ErrDisconnected, b.nc.Status())
	}
	if limit := b.nc.MaxPayload(); limit > 0 && int64(len(payload)) > limit {
		return 0, fmt.Errorf("%w: %d bytes, max_payload %d", ErrPayloadTooLarge, len(payload), limit)
	}
	if err := b.nc.Publish(channel, payload); err != nil {
		return 0, b.publishErr(err, payload)
	}
	return -1, nil
}

// PublishCounted implements scaleout.CountingPublisher; the engine calls it
// for every message on a client's subject: messages with To and Asks with
// To. The message goes out as a NATS request; every node that subscribes
// the subject acks it from its receive loop (see loop), and the server
// answers "no responders" at once when nobody subscribes. So it returns 1
// (at least one node has the client) or 0 (nobody: the engine publishes
// again on the namespace's subject, whose nodes answer when they do not
// hold the client either), for one round trip on the shared connection.
// When no ack comes before ctx is done (a node too old to ack), the message
// was still published and it returns -1.
func (b *broker) PublishCounted(ctx context.Context, channel string, payload []byte) (int, error) {
	if b.closing.Load() {
		return 0, scaleout.ErrClosed
	}
	if !b.nc.IsConnected() {
		// As Publish: fail at once. A request made while nats.go reconnects
		// would wait in its reconnect buffer until ctx is done and then
		// count as published (-1).
		return 0, fmt.Errorf("scaleout/nats: %w (status %v)", nats.ErrDisconnected, b.nc.Status())
	}
	if limit := b.nc.MaxPayload(); limit > 0 && int64(len(payload)) > limit {
		return 0, fmt.Errorf("%w: %d bytes, max_payload %d", ErrPayloadTooLarge, len(payload), limit)
	}
	// After ctx is done nats.go takes the connection's lock once more,
	// which a socket write in progress holds for up to FlusherTimeout:
	// keep that much of the caller's time for it, so the call still
	// returns by the caller's deadline when the server stopped reading.
	if dl, ok := ctx.Deadline(); ok {
		if ft := b.nc.Opts.FlusherTimeout; ft > 0 && time.Until(dl) > ft {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, dl.Add(-ft))
			defer cancel()
		}
	}
	_, err := b.nc.RequestWithContext(ctx, channel, payload)
	switch {
	case err == nil:
		return 1, nil
	case errors.Is(err, nats.ErrNoResponders):
		return 0, nil
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return -1, nil
	default:
		return 0, b.publishErr(err, payload)
	}
}

func (b *broker) publishErr(err error, payload []byte) error {
	if errors.Is(err, nats.ErrMaxPayload) {
		return fmt.Errorf("%w: %d bytes: %w", ErrPayloadTooLarge, len(payload), err)
	}
	return err
}

// Close implements scaleout.Broker: it closes the connection when the
// broker opened it, or removes its subscriptions from the user's, then
// waits for the receive goroutine.
func (b *broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.closing.Store(true)
	subs := b.subs
	b.subs = map[string]*nats.Subscription{}
	b.mu.Unlock()
	if b.owned {
		b.nc.Close()
	} else {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}
	close(b.done)
	b.wg.Wait()
	b.httpc.CloseIdleConnections()
	return nil
}

// Conns implements scaleout.BrokerInspector through the server's /connz:
// the open connections that carry this broker's connection name (or, for a
// user's connection without a name, its client id).
func (b *broker) Conns(ctx context.Context) (int, error) {
	base, err := b.monitorBase()
	if err != nil {
		return 0, err
	}
	if b.name == "" {
		cid, err := b.nc.GetClientID()
		if err != nil {
			return 0, err
		}
		var cz connz
		if err := b.get(ctx, base+"/connz?cid="+strconv.FormatUint(cid, 10), &cz); err != nil {
			return 0, err
		}
		return len(cz.Conns), nil
	}
	const limit = 1024
	n := 0
	for offset := 0; ; offset += limit {
		var cz connz
		if err := b.get(ctx, fmt.Sprintf("%s/connz?limit=%d&offset=%d", base, limit, offset), &cz); err != nil {
			return 0, err
		}
		for _, c := range cz.Conns {
			if c.Name == b.name {
				n++
			}
		}
		if len(cz.Conns) < limit || offset+limit >= cz.Total {
			return n, nil
		}
	}
}

// Subscribers implements scaleout.BrokerInspector through the server's
// /subsz: the subscriptions that match channel, over all of that server's
// clients.
func (b *broker) Subscribers(ctx context.Context, channel string) (int, error) {
	base, err := b.monitorBase()
	if err != nil {
		return 0, err
	}
	var sz struct {
		Total int               `json:"total"`
		List  []json.RawMessage `json:"subscriptions_list"`
	}
	// Older servers (2.9) report in total only what limit let through.
	if err := b.get(ctx, base+"/subsz?subs=1&limit=100000&test="+url.QueryEscape(channel), &sz); err != nil {
		return 0, err
	}
	return max(sz.Total, len(sz.List)), nil
}

type connz struct {
	Total int `json:"total"`
	Conns []struct {
		Name string `json:"name"`
	} `json:"connections"`
}

func (b *broker) monitorBase() (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.monitor == "" {
		return "", fmt.Errorf("scaleout/nats: no MonitorURL set: %w", errors.ErrUnsupported)
	}
	return b.monitor, nil
}

func (b *broker) get(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := b.httpc.Do(req)
	if err != nil {
		return fmt.Errorf("scaleout/nats: monitoring endpoint: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scaleout/nats: monitoring endpoint %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("scaleout/nats: monitoring endpoint %s: %w", u, err)
	}
	return nil
}

var (
	_ scaleout.Broker          = (*broker)(nil)
	_ scaleout.BrokerInspector = (*broker)(nil)
)
