package scaleout

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// recordingBroker records the subscription calls the engine makes. It is a
// unit-test stand-in for the engine's own subscription logic, not for a
// real broker (the conformance suite runs the engine on Redis and NATS).
type recordingBroker struct {
	mu      sync.Mutex
	calls   [][]string // "+" or "-" first, then the channels of one call
	subbed  map[string]bool
	release chan struct{} // when set, Subscribe waits for it
}

func (b *recordingBroker) Start(func(string, []byte), func(error)) error { return nil }
func (b *recordingBroker) Publish(context.Context, string, []byte) (int, error) {
	return 0, nil
}
func (b *recordingBroker) Close() error { return nil }

func (b *recordingBroker) Subscribe(ctx context.Context, channels ...string) error {
	if b.release != nil {
		select {
		case <-b.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	b.record("+", channels, true)
	return nil
}

func (b *recordingBroker) Unsubscribe(_ context.Context, channels ...string) error {
	b.record("-", channels, false)
	return nil
}

func (b *recordingBroker) record(op string, channels []string, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, append([]string{op}, channels...))
	if b.subbed == nil {
		b.subbed = map[string]bool{}
	}
	for _, ch := range channels {
		if on {
			b.subbed[ch] = true
		} else {
			delete(b.subbed, ch)
		}
	}
}

func (b *recordingBroker) state() (calls [][]string, subbed []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subbed {
		subbed = append(subbed, ch)
	}
	slices.Sort(subbed)
	return slices.Clone(b.calls), subbed
}

func startSubs(t *testing.T, b Broker) *subs {
	t.Helper()
	s := newSubs(b, 5*time.Second, func(err error) { t.Errorf("report: %v", err) })
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.run(done)
	}()
	t.Cleanup(func() { close(done); wg.Wait() })
	return s
}

func waitSubs(t *testing.T, b *recordingBroker, want []string) [][]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		calls, subbed := b.state()
		if slices.Equal(subbed, want) {
			return calls
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscribed %v, want %v (calls %v)", subbed, want, calls)
		}
		time.Sleep(time.Millisecond) // polling interval
	}
}

// TestSubsBatch: channels acquired while the subscriber goroutine is busy go
// to the broker together, in one call, not one call each.
func TestSubsBatch(t *testing.T) {
	b := &recordingBroker{release: make(chan struct{})}
	s := startSubs(t, b)
	s.acquire("first") // the goroutine takes it and blocks in Subscribe
	waitQueue := func(n int) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			s.mu.Lock()
			q := len(s.queue)
			s.mu.Unlock()
			if q == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue holds %d channels, want %d", q, n)
			}
			time.Sleep(time.Millisecond) // polling interval
		}
	}
	waitQueue(0)
	var want []string
	for i := range 300 {
		ch := "c" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		s.acquire(ch)
		want = append(want, ch)
	}
	waitQueue(300)
	close(b.release)
	want = append(want, "first")
	slices.Sort(want)
	calls := waitSubs(t, b, want)
	if len(calls) != 2 || len(calls[1]) != 301 {
		t.Errorf("%d Subscribe calls (sizes %v), want 2: one for the first channel, one for the 300 queued meanwhile", len(calls), sizes(calls))
	}
	if got := s.active.Load(); got != 301 {
		t.Errorf("active = %d, want 301", got)
	}
}

func sizes(calls [][]string) []int {
	var n []int
	for _, c := range calls {
		n = append(n, len(c)-1)
	}
	return n
}

// TestSubsRefCount: a channel is subscribed once however many acquire it,
// unsubscribed when the last reference goes, and a release followed by an
// acquire before the goroutine ran leaves it subscribed.
func TestSubsRefCount(t *testing.T) {
	b := &recordingBroker{}
	s := startSubs(t, b)
	s.acquire("x")
	s.acquire("x")
	waitSubs(t, b, []string{"x"})
	s.release("x")
	s.release("x")
	s.acquire("x") // back before (or after) the unsubscribe ran
	waitSubs(t, b, []string{"x"})
	s.release("x")
	calls := waitSubs(t, b, nil)
	subscribes := 0
	for _, c := range calls {
		if c[0] == "+" {
			subscribes += len(c) - 1
		}
	}
	if subscribes > 2 {
		t.Errorf("x subscribed %d times for 2 episodes of use (calls %v)", subscribes, calls)
	}
	if got := s.active.Load(); got != 0 {
		t.Errorf("active = %d after the last release, want 0", got)
	}
	if err := s.acquireNow(context.Background(), "ns1", "ns2"); err != nil {
		t.Fatal(err)
	}
	calls, _ = b.state()
	if last := calls[len(calls)-1]; !slices.Equal(last, []string{"+", "ns1", "ns2"}) {
		t.Errorf("acquireNow: last call %v, want one Subscribe of both", last)
	}
}
