package scaleout_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"
	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/internal/testkit"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

var waitFor = testkit.Until

func TestReadyLifecycle(t *testing.T) {
	exc := scaleout.New(scaleout.NewMemoryBroker().Broker(), "", scaleout.Options{})
	if err := exc.Ready(); !errors.Is(err, scaleout.ErrNotReady) {
		t.Fatalf("Ready before Init = %v, want ErrNotReady", err)
	}
	if err := exc.Init(neffos.Namespaces{"a": nil, "b": nil}); err != nil {
		t.Fatal(err)
	}
	if err := exc.Ready(); err != nil {
		t.Fatalf("Ready after Init = %v, want nil", err)
	}
	if err := exc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := exc.Ready(); !errors.Is(err, scaleout.ErrNotReady) || !errors.Is(err, scaleout.ErrClosed) {
		t.Fatalf("Ready after Close = %v, want ErrNotReady and ErrClosed", err)
	}
}

// ownRedis starts a redis-server of the test's own, and an engine on it
// with short timeouts (not started: Init starts it).
func ownRedis(t *testing.T) (*brokertest.Redis, *scaleout.Exchange) {
	t.Helper()
	r, err := brokertest.StartRedis()
	if err != nil {
		brokertest.Missing(t, "redis-server", err.Error())
	}
	t.Cleanup(r.Stop)
	client := goredis.NewClient(&goredis.Options{Addr: r.Addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	b, err := redis.NewBroker(client)
	if err != nil {
		t.Fatal(err)
	}
	exc := scaleout.New(b, "ready", scaleout.Options{
		PublishTimeout:   500 * time.Millisecond,
		SubscribeTimeout: 500 * time.Millisecond,
		ErrorHandler:     func(error) {}, // outage reports expected
	})
	t.Cleanup(func() {
		_ = exc.Close()
		_ = client.Close() // NewBroker never closes the client it was given
	})
	return r, exc
}

// TestReadyRedisOutage: ready after Init on a real Redis, not ready within
// a bounded time of killing it (the node is idle: only its heartbeat
// publishes), ready again after the restart.
func TestReadyRedisOutage(t *testing.T) {
	r, exc := ownRedis(t)
	if err := exc.Ready(); !errors.Is(err, scaleout.ErrNotReady) {
		t.Fatalf("Ready before Init = %v, want ErrNotReady", err)
	}
	if err := exc.Init(neffos.Namespaces{"chat": nil}); err != nil {
		t.Fatal(err)
	}
	if err := exc.Ready(); err != nil {
		t.Fatalf("Ready after Init = %v, want nil", err)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	// PublishTimeout + a heartbeat interval, plus slack for a loaded
	// machine.
	if !waitFor(500*time.Millisecond+time.Second+5*time.Second, func() bool { return exc.Ready() != nil }) {
		t.Fatal("still ready 6.5 s after the broker was killed")
	}
	if err := exc.Ready(); !errors.Is(err, scaleout.ErrNotReady) || !errors.Is(err, scaleout.ErrBrokerUnavailable) {
		t.Fatalf("Ready with the broker down = %v, want ErrNotReady and ErrBrokerUnavailable", err)
	}
	t.Logf("not ready %v after the kill: %v", time.Since(killed).Round(time.Millisecond), exc.Ready())
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	if !waitFor(10*time.Second, func() bool { return exc.Ready() == nil }) {
		t.Fatalf("not ready 10 s after the broker restarted: %v", exc.Ready())
	}
	t.Logf("ready again %v after the restart", time.Since(restarted).Round(time.Millisecond))
}

// TestReadyBrokerDownAtInit: a node whose broker is down when neffos calls
// Init is not ready, and becomes ready by itself once the broker is back
// and has confirmed the namespace subscriptions.
func TestReadyBrokerDownAtInit(t *testing.T) {
	r, exc := ownRedis(t)
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := exc.Init(neffos.Namespaces{"chat": nil}); err != nil {
		t.Fatal(err)
	}
	if err := exc.Ready(); !errors.Is(err, scaleout.ErrBrokerUnavailable) {
		t.Fatalf("Ready after Init with the broker down = %v, want ErrBrokerUnavailable", err)
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { return exc.Ready() == nil }) {
		t.Fatalf("not ready 10 s after the broker started: %v", exc.Ready())
	}
	n, err := exc.NamespaceSubscribers(context.Background(), "chat")
	if err != nil || n != 1 {
		t.Fatalf("subscribers of the namespace channel once ready = %d, %v; want 1", n, err)
	}
}

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu   sync.Mutex
	pubs []scaleout.PublishSample
	asks []scaleout.AskSample
}

func (r *recorder) ObservePublish(s scaleout.PublishSample) {
	r.mu.Lock()
	r.pubs = append(r.pubs, s)
	r.mu.Unlock()
}

func (r *recorder) ObserveAsk(s scaleout.AskSample) {
	r.mu.Lock()
	r.asks = append(r.asks, s)
	r.mu.Unlock()
}

func (r *recorder) count() (batched, direct, asks int, askErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pubs {
		if p.Direct {
			direct++
		} else {
			batched += p.Messages
		}
	}
	if len(r.asks) > 0 {
		askErr = r.asks[len(r.asks)-1].Err
	}
	return batched, direct, len(r.asks), askErr
}

// TestObserver: broadcasts are observed as pipeline batches, a message To
// one client and an Ask as direct publishes, and the Ask's outcome.
func TestObserver(t *testing.T) {
	rec := &recorder{}
	exc := scaleout.New(scaleout.NewMemoryBroker().Broker(), "", scaleout.Options{Observer: rec})
	defer exc.Close()
	if err := exc.Init(neffos.Namespaces{"a": nil}); err != nil {
		t.Fatal(err)
	}
	msgs := make([]neffos.Message, 10)
	for i := range msgs {
		msgs[i] = neffos.Message{Namespace: "a", Event: "e"}
	}
	if !exc.Publish(msgs) {
		t.Fatal("Publish failed")
	}
	if !waitFor(10*time.Second, func() bool { b, _, _, _ := rec.count(); return b >= 10 }) {
		b, _, _, _ := rec.count()
		t.Fatalf("batched messages observed = %d, want >= 10", b)
	}
	exc.Publish([]neffos.Message{{Namespace: "a", Event: "e", To: "nobody"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := exc.Ask(ctx, neffos.Message{Namespace: "a", Event: "q", To: "nobody"}, "")
	if !errors.Is(err, scaleout.ErrConnNotFound) {
		t.Fatalf("Ask To nobody = %v, want ErrConnNotFound", err)
	}
	_, direct, asks, askErr := rec.count()
	if direct < 2 || asks != 1 || !errors.Is(askErr, scaleout.ErrConnNotFound) {
		t.Fatalf("direct publishes %d (want >= 2), asks %d (want 1), ask error %v (want ErrConnNotFound)", direct, asks, askErr)
	}
}
