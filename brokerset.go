package scaleout

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// brokerSet is what Redundant and Sharded share: several brokers started,
// closed and inspected together.
type brokerSet []Broker

// Start starts every broker; it fails only when none started (the others
// serve meanwhile, and the failures are reported).
func (s brokerSet) Start(deliver func(string, []byte), report func(error)) error {
	if len(s) == 0 {
		return errors.New("scaleout: a broker set needs at least one broker")
	}
	var errs []error
	for i, b := range s {
		if err := b.Start(deliver, report); err != nil {
			errs = append(errs, fmt.Errorf("broker %d: %w", i, err))
		}
	}
	if len(errs) == len(s) {
		return errors.Join(errs...)
	}
	for _, err := range errs {
		report(err)
	}
	return nil
}

// all runs fn on every broker in parallel and returns the results in
// broker order.
func (s brokerSet) all(fn func(int, Broker) error) []error {
	errs := make([]error, len(s))
	var wg sync.WaitGroup
	for i, b := range s {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i, b)
		}()
	}
	wg.Wait()
	return errs
}

// Close closes every broker.
func (s brokerSet) Close() error {
	return errors.Join(s.all(func(_ int, b Broker) error { return b.Close() })...)
}

// Conns sums the inspectable brokers' connections.
func (s brokerSet) Conns(ctx context.Context) (int, error) {
	total, any := 0, false
	for _, b := range s {
		bi, ok := b.(BrokerInspector)
		if !ok {
			continue
		}
		n, err := bi.Conns(ctx)
		if err != nil {
			return 0, err
		}
		total, any = total+n, true
	}
	if !any {
		return 0, fmt.Errorf("scaleout: broker set: %w", errors.ErrUnsupported)
	}
	return total, nil
}

// subscribers asks broker b how many subscribe channel.
func subscribers(ctx context.Context, b Broker, channel string) (int, error) {
	bi, ok := b.(BrokerInspector)
	if !ok {
		return 0, fmt.Errorf("scaleout: subscriber count: %w", errors.ErrUnsupported)
	}
	return bi.Subscribers(ctx, channel)
}

// publishOn publishes through b, counting receivers when counted and b can.
func publishOn(ctx context.Context, b Broker, counted bool, channel string, payload []byte) (int, error) {
	if cp, ok := b.(CountingPublisher); ok && counted {
		return cp.PublishCounted(ctx, channel, payload)
	}
	return b.Publish(ctx, channel, payload)
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
