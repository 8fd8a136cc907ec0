package redis_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"
	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
	"github.com/neffos-contrib/scaleout/stackexchange/stackexchangetest"
)

// Distributed Redis topologies, each started by the test as
// real processes on loopback ports: a Redis Cluster of 3 masters and 3
// replicas, Sentinel (1 master, 1 replica, 3 sentinels), and 3 independent
// redis-servers sharded by channel (scaleout.Sharded).

// ownCluster starts a 3-master, 3-replica Redis Cluster for this test.
func ownCluster(t *testing.T) *brokertest.RedisCluster { return own(t, startCluster) }

// ownSentinel starts 1 master, 1 replica and 3 sentinels for this test.
func ownSentinel(t *testing.T) *brokertest.RedisSentinel { return own(t, startSentinel) }

// own starts a topology with start for this test only.
func own[T interface{ Stop() }](t *testing.T, start func(*testing.T) T) T {
	t.Helper()
	x := start(t)
	t.Cleanup(x.Stop)
	return x
}

func startCluster(t *testing.T) *brokertest.RedisCluster {
	return startTopology(t, "Redis Cluster (3 masters, 3 replicas)", "install redis-server and redis-cli (Redis 7)",
		func() (*brokertest.RedisCluster, error) { return brokertest.StartRedisCluster(3, 1) })
}

func startSentinel(t *testing.T) *brokertest.RedisSentinel {
	return startTopology(t, "Sentinel setup (1 master, 1 replica, 3 sentinels)", "install redis-server (Redis 7, runs as a sentinel with --sentinel)",
		brokertest.StartRedisSentinel)
}

// startTopology starts what (a set of processes) with start; when it
// cannot, the test fails, or is skipped outside CI with how-to.
func startTopology[T any](t *testing.T, what, howto string, start func() (T, error)) T {
	t.Helper()
	begin := time.Now()
	x, err := start()
	if err != nil {
		brokertest.Missing(t, what, fmt.Sprintf("%s: %v", howto, err))
	}
	t.Logf("%s ready in %v", what, time.Since(begin).Round(time.Millisecond))
	return x
}

// The tests that kill nothing share one cluster and one Sentinel setup,
// started by the first test that needs it and stopped by TestMain: each
// takes 5-10 s to form.
var shared struct {
	mu       sync.Mutex
	cluster  *brokertest.RedisCluster
	sentinel *brokertest.RedisSentinel
}

func sharedCluster(t *testing.T) *brokertest.RedisCluster {
	return sharedOf(t, &shared.cluster, startCluster)
}

func sharedSentinel(t *testing.T) *brokertest.RedisSentinel {
	return sharedOf(t, &shared.sentinel, startSentinel)
}

// sharedOf returns *p, started with start by the first test that asks.
func sharedOf[T comparable](t *testing.T, p *T, start func(*testing.T) T) T {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	var zero T
	if *p == zero {
		*p = start(t)
	}
	return *p
}

// stopShared stops what sharedCluster and sharedSentinel started.
func stopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster != nil {
		shared.cluster.Stop()
	}
	if shared.sentinel != nil {
		shared.sentinel.Stop()
	}
}

// runTopology runs the whole conformance suite on a topology, the two
// heavy rules included (they are skipped with -short, as everywhere).
func runTopology(t *testing.T, f stackexchangetest.Factory) {
	stackexchangetest.Run(t, f)
}

// ownShards starts 3 independent redis-servers for this test.
func ownShards(t *testing.T) []*brokertest.Redis {
	t.Helper()
	rs := make([]*brokertest.Redis, 3)
	for i := range rs {
		rs[i] = ownRedis(t)
	}
	return rs
}

func clusterConfig(c *brokertest.RedisCluster) redis.Config {
	return redis.Config{Clusters: c.Addrs(), DialTimeout: time.Second}
}

func sentinelConfig(s *brokertest.RedisSentinel) redis.Config {
	return redis.Config{MasterName: brokertest.SentinelMaster, SentinelAddrs: s.SentinelAddrs(), DialTimeout: time.Second}
}

// configFactory builds the suite's exchanges with the drop-in constructor
// on cfg.
func configFactory(cfg redis.Config) stackexchangetest.Factory {
	return func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange {
		t.Helper()
		exc, err := redis.NewStackExchangeOptions(cfg, channel, opts)
		if err != nil {
			t.Fatalf("NewStackExchange: %v", err)
		}
		return exc
	}
}

// newSharded returns an engine over one redis.NewBroker per address,
// through scaleout.Sharded; the clients close when the test ends (the
// brokers never close a user's client).
func newSharded(t testing.TB, channel string, opts scaleout.Options, addrs ...string) *scaleout.Exchange {
	t.Helper()
	shards := make([]scaleout.Broker, len(addrs))
	for i, addr := range addrs {
		client := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second,
			ReadTimeout: scaleout.DefaultPublishTimeout, WriteTimeout: scaleout.DefaultPublishTimeout})
		t.Cleanup(func() { _ = client.Close() })
		b, err := redis.NewBroker(client)
		if err != nil {
			t.Fatalf("NewBroker: %v", err)
		}
		shards[i] = b
	}
	return scaleout.New(scaleout.Sharded(shards...), channel, opts)
}

func shardedFactory(addrs ...string) stackexchangetest.Factory {
	return func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange {
		t.Helper()
		return newSharded(t, channel, opts, addrs...)
	}
}

func addrsOf(rs []*brokertest.Redis) []string {
	addrs := make([]string, len(rs))
	for i, r := range rs {
		addrs[i] = r.Addr
	}
	return addrs
}

// TestConformanceCluster runs the conformance suite with every node on a
// Redis 7 Cluster through Config.Clusters.
func TestConformanceCluster(t *testing.T) {
	runTopology(t, configFactory(clusterConfig(sharedCluster(t))))
}

// TestConformanceSentinel runs the conformance suite with every node on
// Sentinel through Config.MasterName and Config.SentinelAddrs.
func TestConformanceSentinel(t *testing.T) {
	runTopology(t, configFactory(sentinelConfig(sharedSentinel(t))))
}

// TestConformanceSharded runs the conformance suite with every node on
// scaleout.Sharded over 3 independent redis-servers.
func TestConformanceSharded(t *testing.T) {
	runTopology(t, shardedFactory(addrsOf(ownShards(t))...))
}

// crossCheck starts two nodes on the exchanges build returns, one client on
// each, and checks that broadcasts cross both ways.
func crossCheck(t *testing.T, build func(onErr func(error)) (engineExchange, error)) {
	t.Helper()
	a := startNodeWith(t, "A", build)
	b := startNodeWith(t, "B", build)
	a1 := dialClient(t, "a1", a)
	b1 := dialClient(t, "b1", b)
	deliverAll(t, a, "from-A", 10*time.Second, a1, b1)
	deliverAll(t, b, "from-B", 10*time.Second, a1, b1)
}

// TestUserClusterClient: a ClusterClient built with go-redis's own
// constructor fails on Redis 7 at NewStackExchangeClient with an error that
// names the fix; one built with redis.NewClusterClient works.
func TestUserClusterClient(t *testing.T) {
	c := sharedCluster(t)
	plain := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: c.Addrs(), MaxRetries: -1})
	defer plain.Close()
	exc, err := redis.NewStackExchangeClient(plain, testChannel(t), scaleout.Options{})
	if err == nil {
		exc.Close()
		t.Log("go-redis v8 read Redis's CLUSTER SLOTS by itself (not Redis 7?)")
	} else {
		t.Logf("goredis.NewClusterClient: %v", err)
		if !strings.Contains(err.Error(), "redis.NewClusterClient") {
			t.Errorf("the error does not say how to fix it: %v", err)
		}
	}
	client := redis.NewClusterClient(&goredis.ClusterOptions{Addrs: c.Addrs(), MaxRetries: -1})
	defer client.Close()
	channel := testChannel(t)
	crossCheck(t, func(onErr func(error)) (engineExchange, error) {
		return redis.NewStackExchangeClient(client, channel, scaleout.Options{ErrorHandler: onErr})
	})
}

// TestUserFailoverClient: a user's goredis.NewFailoverClient works through
// NewStackExchangeClient.
func TestUserFailoverClient(t *testing.T) {
	s := sharedSentinel(t)
	client := goredis.NewFailoverClient(&goredis.FailoverOptions{MasterName: brokertest.SentinelMaster,
		SentinelAddrs: s.SentinelAddrs(), MaxRetries: -1})
	defer client.Close()
	channel := testChannel(t)
	crossCheck(t, func(onErr func(error)) (engineExchange, error) {
		return redis.NewStackExchangeClient(client, channel, scaleout.Options{ErrorHandler: onErr})
	})
}
