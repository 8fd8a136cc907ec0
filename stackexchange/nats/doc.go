// Package nats is a neffos StackExchange on NATS core pub/sub (nats.go),
// built on the scaleout engine: several neffos servers behind a load
// balancer act as one. It is a drop-in replacement for neffos's own
// stackexchange/nats: same NewStackExchange, same With, same SubjectPrefix.
//
// # Setup
//
//	exc, err := nats.NewStackExchange("nats://127.0.0.1:4222")
//	if err != nil { /* scaleout.ErrBrokerUnavailable: no NATS server answered */ }
//	server.UseStackExchange(exc) // right after server := neffos.New(...)
//
// Close the exchange when the server stops (neffos v0.0.25 does it in
// Server.Close). To set engine options (timeouts, Options.ErrorHandler,
// Options.QueueSize) use NewStackExchangeOptions; to share a connection the
// app already has, NewStackExchangeConn (the exchange never closes that
// connection). The redis adapter takes them the same way.
//
// # Cost
//
// A node holds one NATS connection, whatever the number of websocket
// clients. On it the node subscribes each namespace's subject once, its own
// node subject once, and one subject per distinct connected client id (for
// messages with To and Asks); an Ask with To also uses nats.go's one shared
// request inbox subscription. A broadcast is one NATS publish, delivered
// once per node and fanned out locally. The subscriptions are not
// per-goroutine: all of them feed one channel drained by one goroutine, so
// a client costs no goroutine in nats.go.
//
// Subjects are "<SubjectPrefix>.ns.<token>", "<SubjectPrefix>.c.<token>" and
// "<SubjectPrefix>.node.<id>", where token escapes every byte outside
// [A-Za-z0-9-] (see the scaleout package): no namespace or client id can
// act as a wildcard ('*', '>') or collide with another ("a.b" and "a_b"
// are different subjects).
//
// # What differs from Redis
//
//   - NATS does not count receivers. A broadcast is a plain publish that
//     returns at once. A message on a client's subject (a Broadcast with To,
//     a Server.Ask with To) is sent as a NATS request that each node holding
//     the client acks: one round trip, and the server's "no responders"
//     tells at once that no node holds it yet, which sends the message on
//     through the namespace's subject. NATS cannot count the nodes that
//     read that one, so a Server.Ask to a client connected nowhere fails
//     with scaleout.ErrConnNotFound after Options.SubscribeTimeout (2 s by
//     default), not at once as on Redis, and never later than ctx.
//   - The server limits a message's size (max_payload, 1 MB by default). A
//     broadcast whose envelope is larger is not sent: Publish returns false
//     and Options.ErrorHandler gets an error wrapping ErrPayloadTooLarge.
//     The node's own clients still get it.
//   - Reconnecting and resubscribing is nats.go's: NewStackExchange sets
//     MaxReconnects to -1 (forever) unless options say otherwise. While a
//     node is disconnected its publishes fail at once (Publish returns
//     false, its own clients are still served) instead of waiting in
//     nats.go's reconnect buffer, and messages other nodes publish
//     meanwhile are lost for it (at most once).
//   - Connection loss is reported through the engine (Options.ErrorHandler,
//     Options.Logger) as an error wrapping scaleout.ErrBrokerUnavailable,
//     after any handler set in the nats options.
//   - The counts of BrokerConns and NamespaceSubscribers come from the NATS
//     server's HTTP monitoring endpoint, only when StackExchange.MonitorURL
//     is set.
//
// # Delivery
//
// While NATS is up every message reaches every matching client exactly
// once; across an outage delivery is at most once. NATS keeps the order of
// one publisher's messages to one subscriber, so messages from one node
// reach a client of another node in the order they were published.
package nats
