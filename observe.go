package scaleout

import (
	"context"
	"time"
)

// Observer receives the latencies an Exchange measures, for metrics
// (histograms of broker publish and Server.Ask latency; the module's
// prometheus package has one). Set it in Options.Observer.
//
// Its methods are called on the engine's goroutines and on the goroutines
// of the callers of Publish and Ask, concurrently, never under an engine
// lock. They must return quickly and never block (record the sample and
// return): a slow ObservePublish slows the node's publish pipeline by as
// much, for every message it sends.
//
// Cost: with a nil Observer, one nil check per broker call and per Ask.
// With one, a time.Now and a time.Since per broker call and per Ask, plus
// what the methods do, and a small allocation per direct publish (a
// closure).
type Observer interface {
	// ObservePublish is called after each publish call to the broker: one
	// attempt to send a pipeline batch (broadcasts, heartbeats, repair
	// answers), or one attempt of a direct publish (a message To one
	// client, an Ask, a reply). A retried publish is observed once per
	// attempt.
	ObservePublish(PublishSample)
	// ObserveAsk is called when a Server.Ask through the exchange returns,
	// whatever its outcome.
	ObserveAsk(AskSample)
}

// PublishSample is one broker publish call, as seen by an Observer.
type PublishSample struct {
	// Messages is how many messages the call carried: a pipeline batch
	// (at most 256), or 1 for a direct publish. With an error, some of
	// them (the first ones) may have been published.
	Messages int
	// Direct is true for a direct publish (messages To one client, Asks,
	// replies, not-here answers, repair requests), which the caller waits
	// for, and false for a batch of the publish pipeline (broadcasts,
	// heartbeats, repair answers), which Publish does not wait for.
	Direct bool
	// Duration is the time the broker call took, bounded by
	// Options.PublishTimeout.
	Duration time.Duration
	// Err is the call's error, nil on success.
	Err error
}

// AskSample is one Server.Ask, as seen by an Observer.
type AskSample struct {
	// Duration is the time from the call of the exchange's Ask to its
	// return: publish, the client's answer and its way back.
	Duration time.Duration
	// Err is what Ask returned: nil, the reply's error, ErrConnNotFound,
	// ctx.Err(), ErrClosed or a publish error.
	Err error
}

// publishFunc is the signature of Broker.Publish and
// CountingPublisher.PublishCounted.
type publishFunc = func(context.Context, string, []byte) (int, error)

// observed returns pub, timed for the Observer when there is one.
func (e *Exchange) observed(pub publishFunc) publishFunc {
	o := e.opts.Observer
	if o == nil {
		return pub
	}
	return func(ctx context.Context, channel string, payload []byte) (int, error) {
		start := time.Now()
		n, err := pub(ctx, channel, payload)
		o.ObservePublish(PublishSample{Messages: 1, Direct: true, Duration: time.Since(start), Err: err})
		return n, err
	}
}

// publishBatchObserved is publishBatch, timed for the Observer when there
// is one.
func (e *Exchange) publishBatchObserved(ctx context.Context, pubs []Publication) (int, error) {
	o := e.opts.Observer
	if o == nil {
		return e.publishBatch(ctx, pubs)
	}
	start := time.Now()
	sent, err := e.publishBatch(ctx, pubs)
	o.ObservePublish(PublishSample{Messages: len(pubs), Duration: time.Since(start), Err: err})
	return sent, err
}

// observeAsk reports an Ask that started at start and returned *err; Ask
// defers it only when there is an Observer.
func (e *Exchange) observeAsk(start time.Time, err *error) {
	e.opts.Observer.ObserveAsk(AskSample{Duration: time.Since(start), Err: *err})
}
