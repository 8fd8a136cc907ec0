package scaleout

import (
	"context"
	"errors"
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
func Redundant(brokers ...Broker) Broker { return &redundant{brokerSet(brokers)} }

// redundantGrace is how long a publish waits for the other brokers once one
// of them took the message.
const redundantGrace = 50 * time.Millisecond

type redundant struct{ brokerSet }

var (
	_ CountingPublisher = (*redundant)(nil)
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
	return r.publish(ctx, false, channel, payload)
}

// PublishCounted counts through the brokers that can (CountingPublisher)
// and takes the largest count.
func (r *redundant) PublishCounted(ctx context.Context, channel string, payload []byte) (int, error) {
	return r.publish(ctx, true, channel, payload)
}

type pubResult struct {
	n   int
	err error
}

// publish runs pub on every broker in parallel. It succeeds when one
// broker took the message; the receiver count is the largest exact count,
// or -1 when no broker counted more than 0 and one could not count.
func (r *redundant) publish(ctx context.Context, counted bool, channel string, payload []byte) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // the brokers still publishing after the grace give up
	results := make(chan pubResult, len(r.brokerSet))
	for _, b := range r.brokerSet {
		go func() {
			n, err := publishOn(ctx, b, counted, channel, payload)
			results <- pubResult{n, err}
		}()
	}
	var grace <-chan time.Time
	best, unknown, ok := 0, false, false
	var errs []error
	for range r.brokerSet {
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
