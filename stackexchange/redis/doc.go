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
// # Connections
//
// A node holds one pub/sub connection (exact SUBSCRIBE, never PSUBSCRIBE)
// and a publish pool of Config.MaxActive connections (default 2), whatever
// its number of websocket clients; neffos's own exchange holds one per
// client. Ask uses those too. Connections are named "scaleout-<random>"
// (CLIENT SETNAME), which is how BrokerConns counts them in CLIENT LIST.
//
// # Failure
//
// go-redis reconnects and resubscribes the pub/sub connection; the broker
// also pings it when idle and replaces it when a ping goes unanswered.
// PUBLISH and SUBSCRIBE are bounded by Options.PublishTimeout and
// Options.SubscribeTimeout and never retried (a retried PUBLISH could
// deliver twice).
package redis
