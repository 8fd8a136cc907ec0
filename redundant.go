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
// (Stats.Duplicates), so each client still gets it exactly once; across a
// broker's failure or return, messages of one origin may arrive out of
// order (the copy of the faster broker wins).
//
//	exc := scaleout.New(scaleout.Redundant(redis.NewBroker(rc), nats.NewBroker(nc)), scaleout.Options{})
//	server.UseStackExchange(exc)
//
// This is what chaining two exchanges through neffos's UseStackExchange
// does not do: neffos publishes on both and every client gets each message
// twice.
//
// Cost: one publish per broker per message, run in parallel; a publish
// returns once every broker answered, or one succeeded and the others had
// redundantGrace more. Each broker keeps its own connections and
// subscriptions. The Broker owns brokers: Close closes all of them.
func Redundant(brokers ...Broker) Broker { return &redundant{brokers: brokers} }

// redundantGrace is how long a publish waits for the other brokers once one
// of them took the message.
const redundantGrace = 50 * time.Millisecond

type redundant struct{ brokers []Broker }

var (
	_ CountingPublisher = (*redundant)(nil)
	_ BrokerInspector   = (*redundant)(nil)
)

func (r *redundant) Start(deliver func(string, []byte), report func(error)) error {
	if len(r.brokers) == 0 {
		return errors.New("scaleout: Redundant needs at least one broker")
	}
	var errs []error
	for i, b := range r.brokers {
		if err := b.Start(deliver, report); err != nil {
			errs = append(errs, fmt.Errorf("broker %d: %w", i, err))
		}
	}
	if len(errs) == len(r.brokers) {
		return errors.Join(errs...)
	}
	for _, err := range errs {
		report(err)
	}
	return nil
}

// all runs fn on every broker in parallel and returns the results in
// broker order.
func (r *redundant) all(fn func(Broker) error) []error {
	errs := make([]error, len(r.brokers))
	var wg sync.WaitGroup
	for i, b := range r.brokers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(b)
		}()
	}
	wg.Wait()
	return errs
}

// anyOK returns nil when one call succeeded, else all the errors.
func anyOK(errs []error) error {
	for _, err := range errs {
		if err == nil {
			return nil
		}
	}
	return errors.Join(errs...)
}

// Subscribe succeeds when one broker confirmed: delivery works through it,
// and the others subscribe the channels again when they come back.
func (r *redundant) Subscribe(ctx context.Context, channels ...string) error {
	return anyOK(r.all(func(b Broker) error { return b.Subscribe(ctx, channels...) }))
}

func (r *redundant) Unsubscribe(ctx context.Context, channels ...string) error {
	return errors.Join(r.all(func(b Broker) error { return b.Unsubscribe(ctx, channels...) })...)
}

func (r *redundant) Publish(ctx context.Context, channel string, payload []byte) (int, error) {
	return r.publish(ctx, func(b Broker, ctx context.Context) (int, error) { return b.Publish(ctx, channel, payload) })
}

// PublishCounted counts through the brokers that can (CountingPublisher)
// and takes the largest count.
func (r *redundant) PublishCounted(ctx context.Context, channel string, payload []byte) (int, error) {
	return r.publish(ctx, func(b Broker, ctx context.Context) (int, error) {
		if cp, ok := b.(CountingPublisher); ok {
			return cp.PublishCounted(ctx, channel, payload)
		}
		return b.Publish(ctx, channel, payload)
	})
}

type pubResult struct {
	n   int
	err error
}

// publish runs pub on every broker in parallel. It succeeds when one
// broker took the message; the receiver count is the largest exact count,
// or -1 when no broker counted more than 0 and one could not count.
func (r *redundant) publish(ctx context.Context, pub func(Broker, context.Context) (int, error)) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // the brokers still publishing after the grace give up
	results := make(chan pubResult, len(r.brokers))
	for _, b := range r.brokers {
		go func() {
			n, err := pub(b, ctx)
			results <- pubResult{n, err}
		}()
	}
	var grace <-chan time.Time
	best, unknown, ok := 0, false, false
	var errs []error
	for range r.brokers {
		var res pubResult
		select {
		case res = <-results:
		case <-grace:
			return count(best, unknown), nil
		}
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

func count(best int, unknown bool) int {
	if best == 0 && unknown {
		return -1
	}
	return best
}

func (r *redundant) Close() error {
	return errors.Join(r.all(Broker.Close)...)
}

// Conns sums the inspectable brokers' connections.
func (r *redundant) Conns(ctx context.Context) (int, error) {
	return r.inspect(func(bi BrokerInspector) (int, error) { return bi.Conns(ctx) }, func(a, b int) int { return a + b })
}

// Subscribers is the largest count of the inspectable brokers.
func (r *redundant) Subscribers(ctx context.Context, channel string) (int, error) {
	return r.inspect(func(bi BrokerInspector) (int, error) { return bi.Subscribers(ctx, channel) }, func(a, b int) int { return max(a, b) })
}

func (r *redundant) inspect(get func(BrokerInspector) (int, error), combine func(a, b int) int) (int, error) {
	total, any := 0, false
	for _, b := range r.brokers {
		bi, ok := b.(BrokerInspector)
		if !ok {
			continue
		}
		n, err := get(bi)
		if err != nil {
			return 0, err
		}
		total, any = combine(total, n), true
	}
	if !any {
		return 0, fmt.Errorf("scaleout: Redundant: %w", errors.ErrUnsupported)
	}
	return total, nil
}
