package redis_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"
	"github.com/kataras/neffos"
	"go.uber.org/goleak"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
	"github.com/neffos-contrib/scaleout/stackexchange/stackexchangetest"
)

// redisAddr is REDIS_ADDR, or a redis-server started for this run.
var (
	redisAddr string
	redisErr  error
)

func TestMain(m *testing.M) {
	var own *brokertest.Redis
	if redisAddr = os.Getenv("REDIS_ADDR"); redisAddr == "" {
		own, redisErr = brokertest.StartRedis()
		if own != nil {
			redisAddr = own.Addr
		}
	}
	code := m.Run()
	if own != nil {
		own.Stop()
	}
	stopShared()
	if code == 0 {
		if err := goleak.Find(leakOptions()...); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func leakOptions() []goleak.Option {
	return []goleak.Option{
		// neffos v0.0.24's server loop has no exit; v0.0.25's exits on Close.
		goleak.IgnoreTopFunction("github.com/kataras/neffos.(*Server).start"),
		// go-redis v8's Ring never stops its heartbeat, even on Close
		// (TestUnsupportedClients builds one to see it rejected).
		goleak.IgnoreTopFunction("github.com/go-redis/redis/v8.(*ringShards).Heartbeat"),
	}
}

func needRedis(t testing.TB) string {
	t.Helper()
	if redisAddr == "" {
		brokertest.Missing(t, "Redis", fmt.Sprintf("set REDIS_ADDR or install redis-server (%v)", redisErr))
	}
	return redisAddr
}

// newExchange is the suite's Factory: the drop-in constructor, with the
// rule's engine options in Config.Options (channel is the prefix).
// factoryAt builds the suite's exchanges on the Redis server at addr, with
// the drop-in constructor.
func factoryAt(addr string) stackexchangetest.Factory {
	return func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange {
		t.Helper()
		exc, err := redis.NewStackExchangeOptions(redis.Config{Addr: addr}, channel, opts)
		if err != nil {
			t.Fatalf("NewStackExchange: %v", err)
		}
		return exc
	}
}

func TestConformance(t *testing.T) {
	stackexchangetest.Run(t, factoryAt(needRedis(t)))
}

// TestFaults runs the conformance package's broker-fault rules on a
// redis-server of the test's own.
func TestFaults(t *testing.T) {
	stackexchangetest.RunFaults(t, func(t *testing.T) ([]stackexchangetest.Process, stackexchangetest.Factory) {
		r := ownRedis(t)
		return []stackexchangetest.Process{r}, factoryAt(r.Addr)
	})
}

func TestUnreachable(t *testing.T) {
	port, err := brokertest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	exc, err := redis.NewStackExchange(redis.Config{Addr: fmt.Sprintf("127.0.0.1:%d", port), DialTimeout: time.Second}, "x")
	if err == nil {
		exc.Close()
		t.Fatal("NewStackExchange to a closed port returned no error")
	}
	if !errors.Is(err, scaleout.ErrBrokerUnavailable) {
		t.Fatalf("error %v does not wrap scaleout.ErrBrokerUnavailable", err)
	}
}

func TestUserClientIsNotClosed(t *testing.T) {
	client := goredis.NewClient(&goredis.Options{Addr: needRedis(t)})
	defer client.Close()
	exc, err := redis.NewStackExchangeClient(client, "userclient", scaleout.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := exc.Init(neffos.Namespaces{"ns": nil}); err != nil {
		t.Fatal(err)
	}
	if err := exc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := exc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		t.Fatalf("the user's client was closed by the exchange: %v", err)
	}
}

// TestDropIn is neffos's own stackexchange/redis usage, unchanged but for
// the import path: every Config field by name, the constructor, and
// UseStackExchange.
func TestDropIn(t *testing.T) {
	exc, err := redis.NewStackExchange(redis.Config{
		Network:     "tcp",
		Addr:        needRedis(t),
		Clusters:    nil,
		Password:    "",
		DialTimeout: 5 * time.Second,
		MaxActive:   10,
	}, "MyChatApp")
	if err != nil {
		t.Fatal(err)
	}
	stackexchangetest.UseAndClose(t, exc)
}
