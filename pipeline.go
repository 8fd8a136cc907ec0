package scaleout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// pipeline is the node's ordered queue of broadcasts for the broker: Publish
// appends and returns, one goroutine hands what waits to the broker in
// batches (one round trip per batch with a BatchPublisher, such as Redis's
// pipelined PUBLISH), in order, and retries a batch that failed, from the
// first message not confirmed, as long as the retransmit buffer holds the
// message (messages the buffer does not cover: 5 PublishTimeouts).
// A retried message that had reached the broker is a duplicate that
// receivers drop by its sequence number.
//
// Bounds: pipelineCount messages and pipelineBytes bytes of payload. A
// Publish that finds the queue full waits for room, at most PublishTimeout,
// and not at all while the broker is known to be down; what is not queued
// is counted in Stats.PublishErrors and reported.
//
// Locks: mu guards the queue; it is a leaf lock, never held while calling
// the broker.
type pipeline struct {
	e *Exchange

	mu     sync.Mutex
	queue  []queued
	bytes  int
	closed bool
	// beatQueued: a heartbeat waits in the queue; no second one is added.
	beatQueued bool
	// failingSince is when the publishes started failing without any
	// progress since (zero: the last one got through); pump goroutine only.
	failingSince time.Time
	wake         chan struct{} // the pump has work
	room         chan struct{} // the queue has room again

	length atomic.Int64
}

type queued struct {
	channel     string
	payload     []byte
	stream, seq uint64 // 0: not numbered
	beat        bool
	enqueued    time.Time
}

const (
	pipelineCount = 8192
	pipelineBytes = 64 << 20
	pipelineBatch = 256
	// pipelineAge is how many PublishTimeouts a message the retransmit
	// buffer does not hold may wait for the broker, queue included, before
	// it is given up on (10 s by default).
	pipelineAge = 5
)

// Publication is one message of a batch handed to a BatchPublisher.
type Publication struct {
	Channel string
	Payload []byte
}

// BatchPublisher is an optional Broker capability: PublishBatch publishes
// batch in order, in as few round trips as the broker can (Redis: one
// pipeline), and returns how many of them, from the first, the broker
// confirmed. An error means batch[sent] failed; messages after it may or
// may not have been published. The engine's pipeline uses it for
// broadcasts; brokers without it get one Publish call per message.
type BatchPublisher interface {
	PublishBatch(ctx context.Context, batch []Publication) (sent int, err error)
}

func newPipeline(e *Exchange) *pipeline {
	return &pipeline{e: e, wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// push queues env for channel. With numbered, env is first given its
// sequence number and retained (history); a numbered message that finds no
// room is retained all the same, so a node that learns its number (the
// next message, or a heartbeat) gets it by repair. push reports whether env
// was queued.
func (p *pipeline) push(channel string, env envelope, numbered bool) bool {
	size := env.size()
	var timer *time.Timer
wait:
	for {
		p.mu.Lock()
		switch {
		case p.closed:
			p.mu.Unlock()
			return false
		case len(p.queue) < pipelineCount && (p.bytes+size <= pipelineBytes || len(p.queue) == 0):
			p.appendLocked(channel, &env, numbered, false)
			p.mu.Unlock()
			signal(p.wake)
			return true
		}
		p.mu.Unlock()
		if timer == nil {
			if p.e.down.Load() {
				break wait
			}
			timer = time.NewTimer(p.e.opts.PublishTimeout)
			defer timer.Stop()
		}
		select {
		case <-p.room:
		case <-timer.C:
			break wait
		case <-p.e.done:
			return false
		}
	}
	if numbered {
		p.e.hist.stamp(p.e.seqChannel(channel, &env), &env, env.kind == kindBroadcast, time.Now())
	}
	return false
}

// appendLocked encodes env (numbering and retaining it first when
// numbered) and appends it to the queue.
func (p *pipeline) appendLocked(channel string, env *envelope, numbered, beat bool) {
	now := time.Now()
	var payload []byte
	if numbered {
		payload = p.e.hist.stamp(p.e.seqChannel(channel, env), env, env.kind == kindBroadcast, now)
	} else {
		payload = encodeEnvelope(env)
	}
	p.queue = append(p.queue, queued{channel: channel, payload: payload, stream: env.stream, seq: env.seq, beat: beat, enqueued: now})
	p.bytes += len(payload)
	p.length.Add(1)
}

// pushBeat queues this node's heartbeat (its info, and the last numbers
// of its streams, taken now, so every number it announces was queued before
// it) unless one is still queued. It is queued even when the queue is
// full: one at a time, so other nodes keep this one in their node list
// under load.
func (p *pipeline) pushBeat() {
	info := p.e.nodeInfo()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.beatQueued {
		return
	}
	for _, body := range encodeBeats(info, p.e.hist.announce(nil)) {
		env := envelope{kind: kindBeat, origin: p.e.node, body: body}
		p.appendLocked(p.e.names.beat(), &env, false, true)
	}
	p.beatQueued = true
	signal(p.wake)
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// take removes up to pipelineBatch messages from the queue's head.
func (p *pipeline) take() []queued {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := min(len(p.queue), pipelineBatch)
	if n == 0 {
		return nil
	}
	batch := make([]queued, n)
	copy(batch, p.queue)
	rest := copy(p.queue, p.queue[n:])
	clear(p.queue[rest:])
	p.queue = p.queue[:rest]
	for _, q := range batch {
		p.bytes -= len(q.payload)
		if q.beat {
			p.beatQueued = false
		}
	}
	p.length.Add(-int64(n))
	signal(p.room)
	// A heartbeat that waited (an outage) is stale: the next one is fresh.
	now := time.Now()
	return slices.DeleteFunc(batch, func(q queued) bool { return q.beat && now.Sub(q.enqueued) > 2*beatInterval })
}

// run sends queued batches until done is closed; then it refuses new
// messages and tries what is still queued once (Close closes the broker
// after it).
func (p *pipeline) run(done <-chan struct{}) {
	for {
		select {
		case <-done:
			p.mu.Lock()
			p.closed = true
			p.mu.Unlock()
			p.drain(done)
			return
		case <-p.wake:
		}
		p.drain(done)
	}
}

func (p *pipeline) drain(done <-chan struct{}) {
	for batch := p.take(); len(batch) > 0; batch = p.take() {
		p.send(batch, done)
	}
}

// send publishes batch in order and retries from the first message not
// confirmed. Each attempt is bounded by PublishTimeout; after
// PublishTimeout without progress the broker counts as down (Publish
// returns false at once), but the batch is still retried: a numbered
// message is given up on only once the retransmit buffer dropped it (then
// it could not be repaired either), any other message (repair answers,
// heartbeats; every message when the buffer is off) when it is older than
// maxAge. So a broker slowed down by load, or back after an outage, loses
// nothing the buffer holds.
func (p *pipeline) send(batch []queued, done <-chan struct{}) {
	e := p.e
	pubs := make([]Publication, len(batch))
	for i := range batch {
		pubs[i] = Publication{Channel: batch[i].channel, Payload: batch[i].payload}
	}
	maxAge := pipelineAge * e.opts.PublishTimeout
	for backoff := retryBackoff; len(pubs) > 0; backoff = min(2*backoff, maxRetryBackoff) {
		attempt := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), e.opts.PublishTimeout)
		sent, err := e.publishBatchObserved(ctx, pubs)
		cancel()
		e.published.Add(uint64(sent))
		batch, pubs = batch[sent:], pubs[sent:]
		if err == nil || sent > 0 {
			e.down.Store(false)
			p.failingSince, backoff = time.Time{}, retryBackoff/2
		}
		if err != nil && !errors.Is(err, ErrRejected) && p.failingSince.IsZero() {
			p.failingSince = attempt
		}
		// The broker made no progress for PublishTimeout (across batches:
		// an idle node's heartbeats fail too): it counts as down.
		now := time.Now()
		downNow := err != nil && !p.failingSince.IsZero() && now.Sub(p.failingSince) >= e.opts.PublishTimeout
		if downNow {
			e.down.Store(true)
		}
		switch {
		case err == nil || e.isClosed():
			return
		case errors.Is(err, ErrRejected):
			e.failed(pubs[0].Channel, err)
			batch, pubs = batch[1:], pubs[1:]
			continue
		case batch[0].stream == 0:
			// Not numbered (a heartbeat, a repair or cluster answer): not
			// retried, so it never holds up the messages behind it (its
			// channel may live on a shard that is down); heartbeats come
			// again, askers ask again or time out.
			batch, pubs = batch[1:], pubs[1:]
			continue
		}
		// The broker is failing or slow: once it is down, what can no
		// longer be delivered is given up on (a healthy broker's
		// back-pressure drops nothing); the rest is retried after a pause.
		old := 0
		if downNow {
			for old < len(batch) && e.expired(&batch[old], now, maxAge) {
				old++
			}
		}
		if old > 0 {
			e.publishErrors.Add(uint64(old) - 1)
			e.failed(pubs[0].Channel, fmt.Errorf("%d messages no longer deliverable given up: %w", old, err))
			batch, pubs = batch[old:], pubs[old:]
		}
		if len(pubs) > 0 && !sleepDone(backoff, done) {
			return
		}
	}
}

// expired reports whether a queued message is no longer worth publishing.
func (e *Exchange) expired(q *queued, now time.Time, maxAge time.Duration) bool {
	if q.stream != 0 && e.hist.on() {
		return !e.hist.holds(q.stream, q.seq)
	}
	return now.Sub(q.enqueued) >= maxAge
}

// sleepDone waits d; it reports false when done closed first.
func sleepDone(d time.Duration, done <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// publishBatch hands pubs to the broker in one call when it can batch, one
// Publish each otherwise.
func (e *Exchange) publishBatch(ctx context.Context, pubs []Publication) (int, error) {
	return publishBatchOn(ctx, e.b, pubs)
}

// publishBatchOn publishes pubs on b in one call when b can batch, one
// Publish each otherwise.
func publishBatchOn(ctx context.Context, b Broker, pubs []Publication) (int, error) {
	if bp, ok := b.(BatchPublisher); ok {
		return bp.PublishBatch(ctx, pubs)
	}
	for i, pub := range pubs {
		if _, err := b.Publish(ctx, pub.Channel, pub.Payload); err != nil {
			return i, err
		}
	}
	return len(pubs), nil
}

// failed counts and reports a publish given up on.
func (e *Exchange) failed(channel string, err error) {
	e.publishErrors.Add(1)
	e.rep.report(fmt.Errorf("%w: %s: %w", ErrPublish, channel, err))
}
