package redis_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"
	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// TestUnsupportedClients: a *goredis.Ring (which refuses a subscription
// without channels), another goredis.UniversalClient implementation and a
// nil client are rejected by NewStackExchangeClient and NewBroker with an
// error saying what is supported, leaving no goroutine behind.
func TestUnsupportedClients(t *testing.T) {
	addr := needRedis(t)
	// No heartbeat during the test: its pings would move the goroutine count.
	ring := goredis.NewRing(&goredis.RingOptions{Addrs: map[string]string{"a": addr}, HeartbeatFrequency: time.Hour})
	defer ring.Close()
	other := goredis.NewClient(&goredis.Options{Addr: addr})
	defer other.Close()
	type wrapped struct{ goredis.UniversalClient }
	before := runtime.NumGoroutine()
	for _, tc := range []struct {
		name   string
		client goredis.UniversalClient
	}{
		{"Ring", ring},
		{"Wrapper", wrapped{other}},
		{"NilClient", (*goredis.Client)(nil)},
		{"Nil", nil},
	} {
		exc, err := redis.NewStackExchangeClient(tc.client, testChannel(t), scaleout.Options{})
		if err == nil {
			exc.Close()
			t.Errorf("%s: NewStackExchangeClient accepted it", tc.name)
		} else {
			t.Logf("%s: NewStackExchangeClient: %v", tc.name, err)
		}
		if !errors.Is(err, scaleout.ErrInvalidConfig) {
			t.Errorf("%s: NewStackExchangeClient: %v, want scaleout.ErrInvalidConfig", tc.name, err)
		}
		if b, err := redis.NewBroker(tc.client); !errors.Is(err, scaleout.ErrInvalidConfig) {
			if err == nil {
				b.Close()
			}
			t.Errorf("%s: NewBroker: %v, want scaleout.ErrInvalidConfig", tc.name, err)
		}
		if tc.name == "Ring" && (err == nil || !strings.Contains(err.Error(), "unsupported client")) {
			t.Errorf("Ring: error %v does not say the client is unsupported", err)
		}
	}
	checkGoroutines(t, "after the rejected clients", before, 0)
}

// TestUnreachableTopologies: a cluster or Sentinel setup that cannot be
// reached fails NewStackExchange with scaleout.ErrBrokerUnavailable within
// DialTimeout, leaving no goroutine behind; Config.MasterName without
// SentinelAddrs is an error at once.
func TestUnreachableTopologies(t *testing.T) {
	const dialTimeout = time.Second
	port, err := brokertest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	closed := fmt.Sprintf("127.0.0.1:%d", port)
	t.Run("Cluster", func(t *testing.T) {
		checkUnreachable(t, redis.Config{Clusters: []string{closed}, DialTimeout: dialTimeout}, dialTimeout)
	})
	t.Run("Sentinel", func(t *testing.T) {
		checkUnreachable(t, redis.Config{MasterName: "m", SentinelAddrs: []string{closed}, DialTimeout: dialTimeout}, dialTimeout)
	})
	t.Run("MasterNameWithoutSentinels", func(t *testing.T) {
		exc, err := redis.NewStackExchange(redis.Config{MasterName: "m"}, "x")
		if err == nil {
			exc.Close()
		}
		if !errors.Is(err, scaleout.ErrInvalidConfig) {
			t.Fatalf("err = %v, want scaleout.ErrInvalidConfig", err)
		}
	})
}

// TestGoRedisLogs: the lines go-redis logs while Redis restarts under an
// exchange ("discarding bad PubSub connection: EOF") reach the exchange's
// ErrorHandler, wrapped in redis.ErrGoRedisLog, and nothing reaches stderr.
func TestGoRedisLogs(t *testing.T) {
	watchdog(t, 90*time.Second)
	r := ownRedis(t)
	stderr := captureStderr(t)

	var mu sync.Mutex
	var lines []string
	exc, err := redis.NewStackExchangeOptions(redis.Config{Addr: r.Addr, DialTimeout: time.Second}, testChannel(t), scaleout.Options{
		ErrorHandler: func(err error) {
			if errors.Is(err, redis.ErrGoRedisLog) {
				mu.Lock()
				lines = append(lines, err.Error())
				mu.Unlock()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := exc.Init(neffos.Namespaces{"ns": nil}); err != nil {
		t.Fatal(err)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	got := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range lines {
			if strings.Contains(l, "discarding bad PubSub connection") {
				return true
			}
		}
		return false
	}
	if !waitUntil(10*time.Second, got) {
		t.Errorf("go-redis's pub/sub line never reached the ErrorHandler")
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := exc.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	t.Logf("ErrorHandler got %d go-redis lines, the first: %q", len(lines), lines[0:min(1, len(lines))])
	mu.Unlock()
	if out := stderr(); strings.Contains(out, "redis:") {
		t.Errorf("go-redis wrote to stderr:\n%s", out)
	}
}

// captureStderr points os.Stderr at a pipe until the returned function is
// called, which restores it and returns what was written.
func captureStderr(t *testing.T) func() string {
	t.Helper()
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	orig := os.Stderr
	os.Stderr = wr
	var buf bytes.Buffer
	copied := make(chan struct{})
	go func() {
		_, _ = io.Copy(&buf, rd)
		close(copied)
	}()
	var once sync.Once
	restore := func() string {
		once.Do(func() {
			os.Stderr = orig
			wr.Close()
			<-copied
			rd.Close()
		})
		return buf.String()
	}
	t.Cleanup(func() { restore() })
	return restore
}

// TestParseSlots: Redis 7's CLUSTER SLOTS reply (a fourth element per
// node, "?" for an unknown host) and Redis 6's both parse; a malformed one
// is an error, not a panic.
func TestParseSlots(t *testing.T) {
	reply := []interface{}{
		[]interface{}{int64(0), int64(5460),
			[]interface{}{"127.0.0.1", int64(7001), "id1", []interface{}{}},
			[]interface{}{"?", int64(7004), "id4", []interface{}{"hostname", "h"}}},
		[]interface{}{int64(5461), int64(16383),
			[]interface{}{"10.0.0.2", int64(7002), "id2"}},
	}
	slots, err := redis.ParseSlots(reply, "10.0.0.9")
	if err != nil {
		t.Fatal(err)
	}
	want := []goredis.ClusterSlot{
		{Start: 0, End: 5460, Nodes: []goredis.ClusterNode{{ID: "id1", Addr: "127.0.0.1:7001"}, {ID: "id4", Addr: "10.0.0.9:7004"}}},
		{Start: 5461, End: 16383, Nodes: []goredis.ClusterNode{{ID: "id2", Addr: "10.0.0.2:7002"}}},
	}
	if fmt.Sprint(slots) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", slots, want)
	}
	for _, bad := range [][]interface{}{
		{"x"},
		{[]interface{}{int64(0)}},
		{[]interface{}{"0", int64(1), []interface{}{"h", int64(1)}}},
		{[]interface{}{int64(0), int64(1), []interface{}{"h"}}},
		{[]interface{}{int64(0), int64(1), []interface{}{"h", "port"}}},
	} {
		if _, err := redis.ParseSlots(bad, "h"); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

// TestGoRedisLogRouting: a go-redis line logged without an exchange's
// context goes to every running exchange's ErrorHandler, and to stderr only
// while no exchange runs.
func TestGoRedisLogRouting(t *testing.T) {
	addr := needRedis(t)
	got := make(chan error, 16)
	exc, err := redis.NewStackExchangeOptions(redis.Config{Addr: addr}, testChannel(t), scaleout.Options{
		ErrorHandler: func(err error) {
			if errors.Is(err, redis.ErrGoRedisLog) {
				got <- err
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := exc.Init(neffos.Namespaces{"ns": nil}); err != nil {
		t.Fatal(err)
	}
	stderr := captureStderr(t)
	redis.GoRedisLog(context.Background(), "a line of the app's own client: %d", 42)
	select {
	case err := <-got:
		if !strings.Contains(err.Error(), "a line of the app's own client: 42") {
			t.Errorf("ErrorHandler got %q", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the running exchange's ErrorHandler did not get the line")
	}
	if err := exc.Close(); err != nil {
		t.Fatal(err)
	}
	redis.GoRedisLog(context.Background(), "after Close")
	out := stderr()
	if strings.Contains(out, "own client") || !strings.Contains(out, "redis: ") || !strings.Contains(out, "after Close") {
		t.Errorf("stderr: %q, want only the line logged while no exchange ran", out)
	}
}
