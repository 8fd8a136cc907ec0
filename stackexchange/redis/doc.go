// Package redis is a neffos StackExchange on Redis pub/sub (go-redis v8),
// a drop-in replacement for neffos's own stackexchange/redis: change the
// import path and nothing else.
//
// # Setup
//
//	import "github.com/neffos-contrib/scaleout/stackexchange/redis"
//
//	exc, err := redis.NewStackExchange(redis.Config{Addr: "127.0.0.1:6379"}, "MyChatApp")
//	server.UseStackExchange(exc)
//
// Engine options (timeouts, Options.ErrorHandler, Options.QueueSize) go
// to NewStackExchangeOptions; a client the app already has, to
// NewStackExchangeClient (the exchange never closes it). The nats adapter
// takes them the same way.
//
// # Topologies
//
//   - One server: Config.Addr.
//   - Redis Cluster (Redis 7+ included): Config.Clusters, the seed nodes. A
//     user's client goes through NewStackExchangeClient; build it with
//     NewClusterClient, which reads Redis 7's CLUSTER SLOTS reply (go-redis
//     v8's own ClusterClient cannot, and the error says so). A node
//     publishes and subscribes on one master chosen at random: any cluster
//     node accepts PUBLISH and the cluster bus copies it to every node, so
//     every PUBLISH costs the cluster one delivery per cluster node, whatever
//     the channel (Redis Cluster adds availability, not pub/sub throughput).
//     A PUBLISH that fails on that master goes through another one at once;
//     a pub/sub connection whose master is lost moves to another master.
//   - Sentinel: Config.MasterName and Config.SentinelAddrs (and
//     SentinelUsername, SentinelPassword), or a user's
//     goredis.NewFailoverClient. After a failover the connections follow
//     the new master by themselves.
//   - Several independent servers sharded by channel, the way pub/sub
//     throughput grows with servers: one NewBroker per server under
//     scaleout.Sharded (see NewBroker).
//
// Other clients, such as a *goredis.Ring, are rejected at construction.
//
// # Connections
//
// A node holds one pub/sub connection (exact SUBSCRIBE, never PSUBSCRIBE)
// and a publish pool of Config.MaxActive connections (default 2), whatever
// its number of websocket clients; neffos's own exchange holds one per
// client. Ask uses those too. On a cluster they are all on one master; on
// Sentinel, on the master (the client also talks to a sentinel); sharded,
// it is that per server. Connections are named "scaleout-<random>"
// (CLIENT SETNAME), which is how BrokerConns counts them in CLIENT LIST.
//
// # Failure
//
// go-redis reconnects and resubscribes the pub/sub connection; the broker
// also pings it when idle and replaces it when a ping goes unanswered.
// PUBLISH and SUBSCRIBE are bounded by Options.PublishTimeout and
// Options.SubscribeTimeout. The engine retries a failed PUBLISH until
// PublishTimeout, and receivers drop what they read twice.
//
// # Logging
//
// go-redis v8 logs through one process-wide logger (goredis.SetLogger),
// to stderr by default. This package replaces it when it is imported: the
// lines go-redis logs for an exchange go to that exchange's
// Options.ErrorHandler and Options.Logger, wrapped in ErrGoRedisLog (and
// nowhere when it sets neither); lines of the application's own go-redis
// clients go to every running exchange's, and to stderr as before while no
// exchange runs. An application that calls goredis.SetLogger itself takes
// every line back.
package redis
