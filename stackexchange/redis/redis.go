package redis

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"time"

	goredis "github.com/go-redis/redis/v8"
	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// Defaults of Config, applied by NewStackExchange.
const (
	// DefaultAddr is Config.Addr's default, as in neffos.
	DefaultAddr = "127.0.0.1:6379"
	// DefaultDialTimeout is Config.DialTimeout's default.
	DefaultDialTimeout = 5 * time.Second
	// DefaultMaxActive is Config.MaxActive's default.
	DefaultMaxActive = 2
)

// Config is neffos's stackexchange/redis Config with the same fields and
// defaults, plus additive ones. Its zero value connects to DefaultAddr.
// Engine options (timeouts, queue size, error handler) are not part of it:
// pass them to NewStackExchangeOptions.
type Config struct {
	// Network to use. Defaults to "tcp".
	Network string
	// Addr of a single redis server instance. See "Clusters" field for
	// clusters support. Defaults to DefaultAddr ("127.0.0.1:6379").
	Addr string
	// Clusters a list of network addresses for clusters. If not empty
	// "Addr" is ignored. Redis Cluster 7+ works (see NewClusterClient).
	Clusters []string
	// Password for AUTH. Empty means no AUTH.
	Password string
	// DialTimeout bounds connecting to Redis, NewStackExchange's first
	// connection included. Zero means DefaultDialTimeout (5s); a negative
	// value means 30s, as in neffos.
	DialTimeout time.Duration
	// MaxActive is the size of the connection pool used to publish. The node
	// also holds one pub/sub connection, so it keeps at most MaxActive+1
	// connections to Redis however many websocket clients it serves.
	// Defaults to DefaultMaxActive, 2 (neffos's default is 10: it needed
	// one per client).
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
}

// StackExchange is a neffos.StackExchange on Redis pub/sub (go-redis v8).
// It is a drop-in replacement for neffos's stackexchange/redis: same
// constructor and Config fields. Its methods are those of the engine
// (scaleout.Exchange), where their costs are documented; all are safe for
// concurrent use.
type StackExchange struct {
	eng *scaleout.Exchange
}

var _ scaleout.StackExchange = (*StackExchange)(nil)

// NewStackExchange connects to Redis and returns a new exchange whose
// channels all start with channel (use one per app that shares the Redis
// server; "" means scaleout.DefaultPrefix, "neffos"), with the engine's
// default options. It returns an error wrapping
// scaleout.ErrBrokerUnavailable when Redis does not answer within
// DialTimeout, and one wrapping scaleout.ErrInvalidConfig when cfg is
// inconsistent. The exchange owns its Redis connections: Close closes
// them.
//
// One server (Addr), a Redis Cluster (Clusters) and Sentinel (MasterName,
// SentinelAddrs) are supported; each node holds one pub/sub connection and
// at most MaxActive connections for PUBLISH (per cluster master it
// publishes to).
func NewStackExchange(cfg Config, channel string) (*StackExchange, error) {
	return NewStackExchangeOptions(cfg, channel, scaleout.Options{})
}

// NewStackExchangeOptions is NewStackExchange with engine options: its
// timeouts, per-connection queue and error handler. opts.PublishTimeout
// also bounds the Redis connections' reads and writes.
func NewStackExchangeOptions(cfg Config, channel string, opts scaleout.Options) (*StackExchange, error) {
	if cfg.MasterName != "" && len(cfg.SentinelAddrs) == 0 {
		return nil, fmt.Errorf("%w: scaleout/redis: Config.MasterName needs Config.SentinelAddrs", scaleout.ErrInvalidConfig)
	}
	if cfg.Network == "" {
		cfg.Network = "tcp"
	}
	if cfg.Addr == "" && len(cfg.Clusters) == 0 {
		cfg.Addr = DefaultAddr
	}
	if cfg.DialTimeout < 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxActive <= 0 {
		cfg.MaxActive = DefaultMaxActive
	}
	opts = withDefaults(opts)
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
	return &StackExchange{eng: scaleout.New(b, channel, opts)}, nil
}

// NewStackExchangeClient returns an exchange that publishes and subscribes
// through the user's client, with channel as NewStackExchange's and the
// engine options opts. The exchange never closes client; its own pub/sub
// connection (one, from client) is closed by Close.
//
// client is a *goredis.Client (goredis.NewClient, or
// goredis.NewFailoverClient for Sentinel) or a *goredis.ClusterClient; for
// Redis Cluster 7+ build it with NewClusterClient (go-redis's own fails on
// Redis 7, and the error says so). Other kinds, such as a *goredis.Ring,
// are rejected.
func NewStackExchangeClient(client goredis.UniversalClient, channel string, opts scaleout.Options) (*StackExchange, error) {
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
	return &StackExchange{eng: scaleout.New(b, channel, opts)}, nil
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
//	exc := scaleout.New(scaleout.Sharded(b1, b2), "", scaleout.Options{})
func NewBroker(client goredis.UniversalClient) (scaleout.Broker, error) {
	if err := checkClient(client); err != nil {
		return nil, err
	}
	return newBroker(client, false, ""), nil
}

// Init implements neffos.StackExchangeInitializer: it subscribes every
// namespace's channel once for this node (scaleout.Exchange.Init).
func (s *StackExchange) Init(namespaces neffos.Namespaces) error { return s.eng.Init(namespaces) }

// OnConnect implements neffos.StackExchange (scaleout.Exchange.OnConnect).
func (s *StackExchange) OnConnect(c *neffos.Conn) error { return s.eng.OnConnect(c) }

// OnDisconnect implements neffos.StackExchange.
func (s *StackExchange) OnDisconnect(c *neffos.Conn) { s.eng.OnDisconnect(c) }

// Publish implements neffos.StackExchange (scaleout.Exchange.Publish).
func (s *StackExchange) Publish(msgs []neffos.Message) bool { return s.eng.Publish(msgs) }

// Subscribe implements neffos.StackExchange.
func (s *StackExchange) Subscribe(c *neffos.Conn, namespace string) { s.eng.Subscribe(c, namespace) }

// Unsubscribe implements neffos.StackExchange.
func (s *StackExchange) Unsubscribe(c *neffos.Conn, namespace string) {
	s.eng.Unsubscribe(c, namespace)
}

// Ask implements neffos.StackExchange (scaleout.Exchange.Ask).
func (s *StackExchange) Ask(ctx context.Context, msg neffos.Message, token string) (neffos.Message, error) {
	return s.eng.Ask(ctx, msg, token)
}

// NotifyAsk implements neffos.StackExchange.
func (s *StackExchange) NotifyAsk(msg neffos.Message, token string) error {
	return s.eng.NotifyAsk(msg, token)
}

// Close stops the exchange (scaleout.Exchange.Close) and closes the Redis
// connections it opened. It is idempotent.
func (s *StackExchange) Close() error { return s.eng.Close() }

// Ready reports whether the node can serve across nodes: nil once Init's
// namespace subscriptions are confirmed and the broker is not known to be
// down; an error wrapping scaleout.ErrNotReady otherwise. For load
// balancers' readiness checks: atomic loads, no broker call.
func (s *StackExchange) Ready() error { return s.eng.Ready() }

// Cluster returns the cluster-wide operations (live nodes, connections on
// every node, remote disconnect and room changes, node-to-node messages):
// see scaleout.Cluster for each call's cost.
func (s *StackExchange) Cluster() *scaleout.Cluster { return s.eng.Cluster() }

// Stats returns the engine's counters (scaleout.Exchange.Stats): atomic
// loads, no lock.
func (s *StackExchange) Stats() scaleout.Stats { return s.eng.Stats() }

// BrokerConns returns how many connections this node holds on Redis, from
// CLIENT LIST (one round trip per Redis server: on a cluster, to every
// node). For tests and monitoring; see scaleout.Exchange.BrokerConns. An
// exchange on the user's client (NewStackExchangeClient) cannot tell its
// connections apart and returns an error wrapping errors.ErrUnsupported.
func (s *StackExchange) BrokerConns(ctx context.Context) (int, error) {
	return s.eng.BrokerConns(ctx)
}

// NamespaceSubscribers returns how many subscriptions Redis counts on the
// channel of namespace (PUBSUB NUMSUB, one round trip per Redis server):
// one per node. For
// tests and monitoring; see scaleout.Exchange.NamespaceSubscribers.
func (s *StackExchange) NamespaceSubscribers(ctx context.Context, namespace string) (int, error) {
	return s.eng.NamespaceSubscribers(ctx, namespace)
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
