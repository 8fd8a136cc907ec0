// Package scaleout runs one neffos websocket app on many server instances
// as if it were one.
//
// A neffos server (github.com/kataras/neffos) routes Server.Broadcast,
// Conn.Write and Server.Ask through a StackExchange when one is plugged in
// with server.UseStackExchange. This package is the engine behind the
// exchanges in stackexchange/redis and stackexchange/nats: it does the
// neffos side once, for any broker that implements the small Broker
// contract.
//
// # Setup
//
//	import "github.com/neffos-contrib/scaleout/stackexchange/redis"
//
//	exc, err := redis.NewStackExchange(redis.Config{Addr: "127.0.0.1:6379"}, "MyChatApp")
//	server.UseStackExchange(exc) // right after server := neffos.New(...)
//
// # What it costs
//
// A node holds O(1) broker connections whatever its number of clients. It
// subscribes each namespace's channel once (in Init), one channel of its
// own (Ask replies) and one channel per distinct connected client id
// (messages with To, Asks with To), in batches. A broadcast is one publish,
// queued and sent in order in batches, read once by each node, decoded
// once, and queued to the node's audience for it (the To client, the
// room's members or the namespace's members, from the node's own index);
// the publishing node serves its own clients directly and ignores its echo.
//
// # Several brokers
//
// Redundant runs one exchange over several brokers at once (losing one
// loses nothing); Sharded spreads its channels over several. Adapters
// export their Broker (redis.NewBroker, nats.NewBroker) for them.
//
// # What holds across nodes
//
// Broadcast to a namespace, a room, one connection (Message.To); excluding a
// *Conn, *NSConn or neffos.Exclude(id) wherever the excluded client is;
// Message.SetBinary, Message.Err, IsNative messages and any body bytes;
// Server.Ask with or without To, whose reply comes back on the asking node's
// channel (no broker connection per Ask) on neffos v0.0.24 and v0.0.25.
//
// # Delivery guarantees
//
// While the broker is healthy, every matching client gets each message
// exactly once, in the order each node published them. Envelopes carry
// sequence numbers: duplicates (a retried publish, a second broker's copy)
// are dropped and counted. Across a broker outage a node keeps serving its
// own clients, and keeps what it publishes in a retransmit buffer
// (Options.Retain, 30 s by default); once the broker is back, the other
// nodes ask for what they missed (they learn of it from the next message or
// from the once-a-second heartbeat) and deliver it late, in the origin's
// order, exactly once. What the buffer no longer holds is counted as missed
// and reported (ErrMissed). A client that stops reading loses what does not
// fit in its queue (Options.QueueSize); nobody else waits for it.
//
// # Metrics and readiness
//
// Options.Observer receives the latency of every broker publish call and
// of every Server.Ask; Exchange.Ready says whether the node should get
// traffic (Init done, namespace subscriptions confirmed, broker not down).
// The module github.com/neffos-contrib/scaleout/prometheus turns Stats and
// the Observer's samples into Prometheus metrics and serves Ready over
// HTTP.
//
// # Errors
//
// Errors are values (ErrClosed, ErrPublish, ErrConnNotFound, ...) to test
// with errors.Is. Errors that happen in the background go to
// Options.ErrorHandler and Options.Logger, and are counted in Stats.
package scaleout
