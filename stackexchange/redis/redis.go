package redis

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	goredis "github.com/go-redis/redis/v8"
	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// Config is neffos's stackexchange/redis Config with the same fields and
// defaults, plus additive ones. Its zero value connects to 127.0.0.1:6379.
type Config struct {
	// Network to use. Defaults to "tcp".
	Network string
	// Addr of a single redis server instance. See "Clusters" field for
	// clusters support. Defaults to "127.0.0.1:6379".
	Addr string
	// Clusters a list of network addresses for clusters. If not empty
	// "Addr" is ignored. Redis Cluster 7+ works (see NewClusterClient).
	Clusters []string
	// Password for AUTH. Empty means no AUTH.
	Password string
	// DialTimeout bounds connecting to Redis, NewStackExchange's first
	// connection included. Zero means 5s; a negative value means 30s, as in
	// neffos.
	DialTimeout time.Duration
	// MaxActive is the size of the connection pool used to publish. The node
	// also holds one pub/sub connection, so it keeps at most MaxActive+1
	// connections to Redis however many websocket clients it serves.
	// Defaults to 2 (neffos's default is 10: it needed one per client).
	MaxActive int

	// Username for ACL AUTH (Redis 6+). Empty means the default user.
	Username string
	// DB selects a database. Pub/sub is not scoped by database in Redis;
	// this only matters for the connections' other commands.
	DB int
	// TLSConfig, when not nil, connects with TLS (to the sentinels too).
	TLSConfig *tls.Config

	// MasterName, when not empty, connects through Redis Sentinel to the
	// master the sentinels at SentinelAddrs monitor under this name, and
	// follows it when they fail it over (go-redis's failover client). Addr
	// and Clusters are then ignored.
	MasterName string
	// SentinelAddrs are the sentinels' addresses (host:port), required
	// with MasterName.
	SentinelAddrs []string
	// SentinelUsername and SentinelPassword authenticate to the sentinels
	// (Username and Password authenticate to Redis). Empty means no AUTH.
	SentinelUsername string
	SentinelPassword string

	// Options configures the engine: timeouts, the per-connection queue,
	// the error handler. Options.Prefix is ignored: the channel argument of
	// NewStackExchange sets it.
	scaleout.Options
}

// StackExchange is a neffos.StackExchange on Redis pub/sub (go-redis v8).
// It is a drop-in replacement for neffos's stackexchange/redis: same
// constructor and Config fields. All its methods are the engine's
// (scaleout.Exchange); see there for what they cost.
type StackExchange struct {
	*scaleout.Exchange
}

var _ scaleout.StackExchange = (*StackExchange)(nil)

// NewStackExchange connects to Redis and returns a new exchange whose
// channels all start with channel (use one per app that shares the Redis
// server; "" means "neffos"). It returns an error wrapping
// scaleout.ErrBrokerUnavailable when Redis does not answer within
// DialTimeout. The exchange owns its Redis connections: Close closes them.
//
// One server (Addr), a Redis Cluster (Clusters) and Sentinel (MasterName,
// SentinelAddrs) are supported; each node holds one pub/sub connection and
// at most MaxActive connections for PUBLISH (per cluster master it
// publishes to).
func NewStackExchange(cfg Config, channel string) (*StackExchange, error) {
	if cfg.MasterName != "" && len(cfg.SentinelAddrs) == 0 {
		return nil, errors.New("scaleout/redis: Config.MasterName needs Config.SentinelAddrs")
	}
	if cfg.Network == "" {
		cfg.Network = "tcp"
	}
	if cfg.Addr == "" && len(cfg.Clusters) == 0 {
		cfg.Addr = "127.0.0.1:6379"
	}
	if cfg.DialTimeout < 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.MaxActive <= 0 {
		cfg.MaxActive = 2
	}
	opts := withDefaults(cfg.Options)
	name := "scaleout-" + randomHex()
	addrs := cfg.Clusters
	if cfg.MasterName != "" {
		addrs = cfg.SentinelAddrs
	} else if len(addrs) == 0 {
		addrs = []string{cfg.Addr}
	}
	network := cfg.Network
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 5 * time.Minute}
	uo := &goredis.UniversalOptions{
		Addrs:    addrs,
		Username: cfg.Username,
		Password: cfg.Password,
		DB:       cfg.DB,
		Dialer: func(ctx context.Context, _, addr string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, network, addr)
			if err != nil || cfg.TLSConfig == nil {
				return conn, err
			}
			tc := tls.Client(conn, tlsFor(cfg.TLSConfig, addr))
			if err := tc.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, err
			}
			return tc, nil
		},
		OnConnect: func(ctx context.Context, cn *goredis.Conn) error {
			return cn.ClientSetName(ctx, name).Err()
		},
		DialTimeout:  cfg.DialTimeout,
		ReadTimeout:  opts.PublishTimeout,
		WriteTimeout: opts.PublishTimeout,
		PoolSize:     cfg.MaxActive,
		PoolTimeout:  opts.PublishTimeout,
		MaxRetries:   -1, // a retried PUBLISH may deliver twice.
	}
	var client goredis.UniversalClient
	switch {
	case cfg.MasterName != "":
		uo.MasterName = cfg.MasterName
		uo.SentinelUsername = cfg.SentinelUsername
		uo.SentinelPassword = cfg.SentinelPassword
		client = goredis.NewFailoverClient(uo.Failover())
	case len(cfg.Clusters) > 0:
		client = NewClusterClient(uo.Cluster())
	default:
		client = goredis.NewClient(uo.Simple())
	}
	b := newBroker(client, true, name)
	ctx, cancel := context.WithTimeout(b.ctx, cfg.DialTimeout)
	defer cancel()
	if err := b.ping(ctx); err != nil {
		b.Close()
		return nil, fmt.Errorf("%w: redis %s: %w", scaleout.ErrBrokerUnavailable, strings.Join(addrs, ","), err)
	}
	opts.Prefix = channel
	return &StackExchange{Exchange: scaleout.New(b, opts)}, nil
}

// NewStackExchangeClient returns an exchange that publishes and subscribes
// through the user's client. The exchange never closes client; its own
// pub/sub connection (one, from client) is closed by Close. Options.Prefix
// is the channel prefix ("" means "neffos").
//
// client is a *goredis.Client (goredis.NewClient, or
// goredis.NewFailoverClient for Sentinel) or a *goredis.ClusterClient; for
// Redis Cluster 7+ build it with NewClusterClient (go-redis's own fails on
// Redis 7, and the error says so). Other kinds, such as a *goredis.Ring,
// are rejected.
func NewStackExchangeClient(client goredis.UniversalClient, opts scaleout.Options) (*StackExchange, error) {
	if err := checkClient(client); err != nil {
		return nil, err
	}
	opts = withDefaults(opts)
	b := newBroker(client, false, "")
	ctx, cancel := context.WithTimeout(b.ctx, opts.SubscribeTimeout)
	defer cancel()
	if err := b.ping(ctx); err != nil {
		b.Close()
		return nil, fmt.Errorf("%w: redis: %w", scaleout.ErrBrokerUnavailable, clusterHint(err))
	}
	return &StackExchange{Exchange: scaleout.New(b, opts)}, nil
}

// NewBroker returns the broker side of an exchange on the user's client,
// for an engine the user builds with scaleout.New, such as one over
// several brokers (scaleout.Redundant). It holds one pub/sub connection of
// its own, from client, and publishes through client; it never closes
// client. It does not check that Redis answers; NewStackExchangeClient
// does. client is one of the kinds NewStackExchangeClient accepts; others
// are rejected here.
//
// Several independent Redis servers, sharded by channel:
//
//	b1, _ := redis.NewBroker(goredis.NewClient(&goredis.Options{Addr: "10.0.0.1:6379"}))
//	b2, _ := redis.NewBroker(goredis.NewClient(&goredis.Options{Addr: "10.0.0.2:6379"}))
//	exc := scaleout.New(scaleout.Sharded(b1, b2), scaleout.Options{})
func NewBroker(client goredis.UniversalClient) (scaleout.Broker, error) {
	if err := checkClient(client); err != nil {
		return nil, err
	}
	return newBroker(client, false, ""), nil
}

func withDefaults(o scaleout.Options) scaleout.Options {
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = scaleout.DefaultPublishTimeout
	}
	if o.SubscribeTimeout <= 0 {
		o.SubscribeTimeout = scaleout.DefaultSubscribeTimeout
	}
	return o
}

func tlsFor(c *tls.Config, addr string) *tls.Config {
	if c.ServerName != "" || c.InsecureSkipVerify {
		return c
	}
	c = c.Clone()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		c.ServerName = host
	}
	return c
}

// Compile-time check that the drop-in signature matches neffos's.
var _ func(Config, string) (*StackExchange, error) = NewStackExchange

var _ neffos.StackExchange = (*StackExchange)(nil)
