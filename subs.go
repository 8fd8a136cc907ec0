package scaleout

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// subs keeps the node's broker subscriptions: one per channel however many
// users it has (reference-counted), brought in line with the counts by one
// goroutine that hands every waiting change to the broker at once (one
// Subscribe and one Unsubscribe call per batch), so a connect storm costs a
// broker round trip per batch, not per client.
//
// Locks: mu guards the table and the queue; it is never held while calling
// the broker or report.
type subs struct {
	b       Broker
	timeout time.Duration
	report  func(error)
	dropped func(channels ...string) // after an unsubscribe

	mu    sync.Mutex
	state map[string]*subState
	queue []string // channels whose subscription must be brought in line
	wake  chan struct{}

	active atomic.Int64 // channels subscribed (or being subscribed) now

	// unconfirmed holds the channels acquireConfirmed took whose
	// subscription the broker has not confirmed yet (guarded by mu); run
	// asks again every confirmRetry until it does. confirmed is true when
	// it is empty and acquireConfirmed ran (Exchange.Ready).
	unconfirmed map[string]struct{}
	confirmed   atomic.Bool
	retry       chan struct{} // acquireConfirmed failed: run arms its timer
}

type subState struct {
	refs   int
	active bool // subscribed on the broker (or being subscribed)
	queued bool // in queue
}

// maxBatch bounds the channels of one Subscribe or Unsubscribe call.
const maxBatch = 1024

func newSubs(b Broker, timeout time.Duration, report func(error)) *subs {
	return &subs{b: b, timeout: timeout, report: report, state: make(map[string]*subState), wake: make(chan struct{}, 1),
		unconfirmed: make(map[string]struct{}), retry: make(chan struct{}, 1)}
}

// confirmRetry is how often run asks the broker again for channels
// acquireConfirmed could not get confirmed.
const confirmRetry = time.Second

// acquireConfirmed is acquireNow for channels the node's readiness depends
// on (the namespaces of Init): until the broker confirmed every one of
// them, confirmed is false, and run subscribes the missing ones again
// every confirmRetry (a broker that is down at Init).
func (s *subs) acquireConfirmed(ctx context.Context, channels ...string) error {
	s.mu.Lock()
	for _, ch := range channels {
		s.unconfirmed[ch] = struct{}{}
	}
	s.mu.Unlock()
	// Channels acquireNow skips (subscribed before, on a client's
	// namespace connect) count as confirmed: Init comes first in neffos.
	if err := s.acquireNow(ctx, channels...); err != nil {
		signal(s.retry)
		return err
	}
	s.mu.Lock()
	for _, ch := range channels {
		delete(s.unconfirmed, ch)
	}
	s.confirmed.Store(len(s.unconfirmed) == 0)
	s.mu.Unlock()
	return nil
}

// subscribeQuiet asks the broker for channels without reporting a failure.
func (s *subs) subscribeQuiet(ctx context.Context, channels ...string) error {
	return s.b.Subscribe(ctx, channels...)
}

// reconfirm subscribes the channels still unconfirmed again; it reports
// whether some remain.
func (s *subs) reconfirm() bool {
	s.mu.Lock()
	need := make([]string, 0, len(s.unconfirmed))
	for ch := range s.unconfirmed {
		need = append(need, ch)
	}
	s.mu.Unlock()
	if len(need) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if s.subscribeQuiet(ctx, need...) != nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range need {
		delete(s.unconfirmed, ch)
	}
	s.confirmed.Store(len(s.unconfirmed) == 0)
	return !s.confirmed.Load()
}

// acquireNow takes a reference on each channel and subscribes, before it
// returns, those that had none (namespaces in Init, the node channel).
func (s *subs) acquireNow(ctx context.Context, channels ...string) error {
	var need []string
	s.mu.Lock()
	for _, ch := range channels {
		st := s.ref(ch)
		if !st.active && !st.queued {
			st.active = true
			s.active.Add(1)
			need = append(need, ch)
		}
	}
	s.mu.Unlock()
	if len(need) == 0 {
		return nil
	}
	return s.subscribe(ctx, need)
}

// acquire takes a reference on channel; the subscriber goroutine subscribes
// it in the background when it is the first.
func (s *subs) acquire(channel string) {
	s.mu.Lock()
	st := s.ref(channel)
	kick := s.enqueueLocked(channel, st, !st.active)
	s.mu.Unlock()
	if kick {
		s.kick()
	}
}

// release drops a reference on channel; the subscriber goroutine
// unsubscribes it once no reference is left.
func (s *subs) release(channel string) {
	s.mu.Lock()
	st := s.state[channel]
	kick := false
	if st != nil {
		st.refs--
		kick = s.enqueueLocked(channel, st, st.refs <= 0)
	}
	s.mu.Unlock()
	if kick {
		s.kick()
	}
}

func (s *subs) ref(channel string) *subState {
	st := s.state[channel]
	if st == nil {
		st = &subState{}
		s.state[channel] = st
	}
	st.refs++
	return st
}

// enqueueLocked queues channel for the subscriber goroutine when need and
// it is not queued yet; it reports whether the goroutine must be woken.
func (s *subs) enqueueLocked(channel string, st *subState, need bool) bool {
	if !need || st.queued {
		return false
	}
	st.queued = true
	s.queue = append(s.queue, channel)
	return true
}

func (s *subs) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run applies queued changes until done is closed. Each change looks at
// the channel's reference count when it runs, so a channel released and
// acquired again meanwhile is left alone, and the batches go out in order:
// an unsubscribe never overtakes a later subscribe of the same channel.
func (s *subs) run(done <-chan struct{}) {
	retry := time.NewTimer(confirmRetry)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-done:
			return
		case <-s.retry:
			retry.Reset(confirmRetry)
			continue
		case <-retry.C:
			if s.reconfirm() {
				retry.Reset(confirmRetry)
			}
			continue
		case <-s.wake:
		}
		for {
			sub, unsub := s.take()
			if len(sub) == 0 && len(unsub) == 0 {
				break
			}
			s.apply(sub, unsub)
		}
	}
}

// take decides, for up to maxBatch queued channels, which to subscribe and
// which to unsubscribe.
func (s *subs) take() (sub, unsub []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(len(s.queue), maxBatch)
	for _, ch := range s.queue[:n] {
		st := s.state[ch]
		if st == nil {
			continue
		}
		st.queued = false
		switch {
		case st.refs > 0 && !st.active:
			st.active = true
			s.active.Add(1)
			sub = append(sub, ch)
		case st.refs <= 0:
			delete(s.state, ch)
			if st.active {
				s.active.Add(-1)
				unsub = append(unsub, ch)
			}
		}
	}
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	return sub, unsub
}

func (s *subs) apply(sub, unsub []string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if len(unsub) > 0 {
		if err := s.b.Unsubscribe(ctx, unsub...); err != nil {
			s.report(fmt.Errorf("%w: unsubscribe %s: %w", ErrSubscribe, describe(unsub), err))
		}
		if s.dropped != nil {
			s.dropped(unsub...)
		}
	}
	if len(sub) > 0 {
		_ = s.subscribe(ctx, sub)
	}
}

func (s *subs) subscribe(ctx context.Context, channels []string) error {
	if err := s.b.Subscribe(ctx, channels...); err != nil {
		err = fmt.Errorf("%w: %s: %w", ErrSubscribe, describe(channels), err)
		s.report(err)
		return err
	}
	return nil
}

// describe names channels in an error: the channel, or how many and the
// first.
func describe(channels []string) string {
	if len(channels) == 1 {
		return channels[0]
	}
	return fmt.Sprintf("%d channels (%s, ...)", len(channels), channels[0])
}
