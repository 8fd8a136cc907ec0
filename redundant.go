package scaleout

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Redundant returns a Broker that uses every one of brokers at once: each
// channel is subscribed on all of them and each message published on all
// of them, so losing any one broker loses nothing, and a node keeps its
// cross-node delivery while at least one of them is up. Every node of the
// app must use the same brokers. Receivers read each message once per
// broker and drop the copies by their sequence numbers
// (Stats.Duplicates), so each client still gets it exactly once. While
// every broker is in step, one origin's messages arrive in order; when one
// falls out of step (it failed, or lagged more than 50 ms behind another
// in a burst) or comes back, a message may be overtaken by a later one
// that a less loaded broker delivered first. A copy later than ten seconds
// counts as missed.
//
//	exc := scaleout.New(scaleout.Redundant(redis.NewBroker(rc), nats.NewBroker(nc)), "", scaleout.Options{})
//	server.UseStackExchange(exc)
//
// This is what chaining two exchanges through neffos's UseStackExchange
// does not do: neffos publishes on both and every client gets each message
// twice.
//
// Cost: one publish per broker per message, run in parallel; a publish
// returns once every broker answered, or one succeeded and the others had
// redundantGrace (50 ms) more; a broker still busy then finishes that
// publish in the background, within its deadline. A broker that fails or
// lags is left out until it answers a probe in time (one a second), so a
// paused broker costs each publish nothing after the first. Each broker keeps its own
// connections and subscriptions. The Broker owns brokers: Close closes all
// of them.
func Redundant(brokers ...Broker) Broker { return &redundant{brokerSet: brokerSet(brokers)} }

// redundantGrace is how long a publish waits for the other brokers once one
// of them took the message.
const redundantGrace = 50 * time.Millisecond

type redundant struct {
	brokerSet

	mu  sync.Mutex  // guards out
	out []time.Time // per broker: zero when in step, else when it fell out (or was last probed)
}

var (
	_ CountingPublisher = (*redundant)(nil)
	_ BatchPublisher    = (*redundant)(nil)
	_ BrokerInspector   = (*redundant)(nil)
)

// Subscribe succeeds when one broker confirmed: delivery works through it,
// and the others subscribe the channels again when they come back.
func (r *redundant) Subscribe(ctx context.Context, channels ...string) error {
	return anyOK(r.all(func(_ int, b Broker) error { return b.Subscribe(ctx, channels...) }))
}

func (r *redundant) Unsubscribe(ctx context.Context, channels ...string) error {
	return errors.Join(r.all(func(_ int, b Broker) error { return b.Unsubscribe(ctx, channels...) })...)
}

func (r *redundant) Publish(ctx context.Context, channel string, payload []byte) (int, error) {
	return r.publish(ctx, func(ctx context.Context, b Broker) (int, error) {
		return publishOn(ctx, b, false, channel, payload)
	})
}

// PublishBatch hands the batch to every broker in step at once (a Redis
// pipeline each, for instance); a broker that confirms less than the whole
// batch falls out of step. It returns the batch's length when one broker
// confirmed all of it.
func (r *redundant) PublishBatch(ctx context.Context, batch []Publication) (int, error) {
	n, err := r.publish(ctx, func(ctx context.Context, b Broker) (int, error) {
		sent, err := publishBatchOn(ctx, b, batch)
		if err == nil && sent < len(batch) {
			err = fmt.Errorf("scaleout: %d of %d published", sent, len(batch))
		}
		return sent, err
	})
	if err != nil {
		return 0, err
	}
	return min(n, len(batch)), nil
}

// PublishCounted counts through the brokers that can (CountingPublisher)
// and takes the largest count.
func (r *redundant) PublishCounted(ctx context.Context, channel string, payload []byte) (int, error) {
	return r.publish(ctx, func(ctx context.Context, b Broker) (int, error) {
		return publishOn(ctx, b, true, channel, payload)
	})
}

type pubResult struct {
	broker int
	n      int
	err    error
}

// publish publishes on every broker in step, in parallel. It succeeds
// when one broker took the message; the receiver count is the largest
// exact count, or -1 when no broker counted more than 0 and one could not
// count.
//
// A broker that fails, or is still busy redundantGrace after another one
// took the message, is out of step: it is left out of the next publishes
// (the others carry them) but for one probe a second, which brings it back
// in step when it answers within the grace. So every broker in step
// carries every message in order, and a receiver reading both never sees a
// message overtaken by a later one, but while one falls out of or back
// into step.
//
// A broker still publishing after the grace is not cancelled: its publish
// runs on until it returns or ctx's deadline passes (results has room for
// every answer, so it never blocks), because the broker that answered
// first may only have buffered the message (nats.go does while it
// reconnects) and the late one may be the one that delivers it.
func (r *redundant) publish(ctx context.Context, pub func(context.Context, Broker) (int, error)) (int, error) {
	results := make(chan pubResult, len(r.brokerSet))
	now := time.Now()
	var asked []int
	for i, b := range r.brokerSet {
		if !r.inStep(i, now) {
			continue
		}
		asked = append(asked, i)
		go func() {
			bctx, cancel := outliving(ctx)
			defer cancel()
			n, err := pub(bctx, b)
			results <- pubResult{i, n, err}
		}()
	}
	var grace <-chan time.Time
	best, unknown, ok := 0, false, false
	var errs []error
	answered := make(map[int]bool, len(asked))
	for range asked {
		var res pubResult
		select {
		case res = <-results:
		case <-grace:
			for _, i := range asked {
				if !answered[i] {
					r.setStep(i, false)
				}
			}
			return count(best, unknown), nil
		}
		answered[res.broker] = true
		r.setStep(res.broker, res.err == nil)
		if res.err != nil {
			errs = append(errs, res.err)
			continue
		}
		if !ok {
			ok = true
			t := time.NewTimer(redundantGrace)
			defer t.Stop()
			grace = t.C
		}
		if res.n < 0 {
			unknown = true
		} else {
			best = max(best, res.n)
		}
	}
	if !ok {
		return 0, errors.Join(errs...)
	}
	return count(best, unknown), nil
}

// outliving returns a context with ctx's values and deadline that is not
// cancelled when ctx is: a publish handed to a broker finishes even after
// its caller went on. Without a deadline it lasts DefaultPublishTimeout.
func outliving(ctx context.Context) (context.Context, context.CancelFunc) {
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(DefaultPublishTimeout)
	}
	return context.WithDeadline(context.WithoutCancel(ctx), d)
}

// redundantProbe is how often a broker out of step is tried again.
const redundantProbe = time.Second

// inStep reports whether broker i takes part in a publish at now: it is in
// step, every broker is out of step (then all are tried), or its probe is
// due.
func (r *redundant) inStep(i int, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.out == nil {
		r.out = make([]time.Time, len(r.brokerSet))
	}
	if r.out[i].IsZero() {
		return true
	}
	all := true
	for _, t := range r.out {
		all = all && !t.IsZero()
	}
	if all || now.Sub(r.out[i]) >= redundantProbe {
		r.out[i] = now // the next probe a second later
		return true
	}
	return false
}

func (r *redundant) setStep(i int, in bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.out == nil {
		r.out = make([]time.Time, len(r.brokerSet))
	}
	switch {
	case in:
		r.out[i] = time.Time{}
	case r.out[i].IsZero():
		r.out[i] = time.Now()
	}
}

func count(best int, unknown bool) int {
	if best == 0 && unknown {
		return -1
	}
	return best
}

// Subscribers is the largest count of the inspectable brokers.
func (r *redundant) Subscribers(ctx context.Context, channel string) (int, error) {
	best, err := 0, error(nil)
	for _, b := range r.brokerSet {
		n, e := subscribers(ctx, b, channel)
		if e != nil {
			err = e
			continue
		}
		best = max(best, n)
	}
	if best == 0 && err != nil {
		return 0, err
	}
	return best, nil
}
