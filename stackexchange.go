package scaleout

import (
	"context"
	"log/slog"
	"time"

	"github.com/kataras/neffos"
)

// StackExchange is what every exchange of this module implements: neffos's
// StackExchange and StackExchangeInitializer, plus Close (neffos v0.0.25
// calls it as StackExchangeCloser on Server.Close) and Stats.
//
// Register one with server.UseStackExchange(exc) right after neffos.New.
type StackExchange interface {
	neffos.StackExchange
	neffos.StackExchangeInitializer

	// Close stops every goroutine the exchange started and closes the broker
	// connections it opened. It is idempotent.
	Close() error
	// Stats returns the exchange's counters. It is cheap: atomic loads, no
	// lock.
	Stats() Stats
}

// Broker is the small contract a backend adapter implements for the engine
// (see New). The engine owns every decision about what to publish and
// subscribe; a Broker only moves opaque payloads on named channels.
//
// Channel names built by the engine use only the bytes [A-Za-z0-9._~-], have
// no empty '.'-separated token and no wildcard, so they are valid Redis
// channels and NATS subjects as they are.
//
// Methods other than Start may be called concurrently.
type Broker interface {
	// Start is called once, before any other method. The broker calls
	// deliver for every message received on a subscribed channel, from its
	// receive loop; deliver never blocks on a websocket client (it does
	// bounded, local work), and must not be called after Close returns. The
	// broker calls report with asynchronous errors (connection lost, ...).
	Start(deliver func(channel string, payload []byte), report func(error)) error
	// Subscribe subscribes the channels and returns after the broker server
	// confirmed all of them, or ctx is done. A broker sends them in as few
	// round trips as it can (one SUBSCRIBE for many channels, one flush):
	// the engine hands over every channel that is waiting at once, so a
	// connect storm costs a round trip per batch, not per client. The broker
	// remembers the channels even when it returns an error, and subscribes
	// them again whenever its connection is re-established.
	Subscribe(ctx context.Context, channels ...string) error
	// Unsubscribe forgets the channels, in as few round trips as it can.
	Unsubscribe(ctx context.Context, channels ...string) error
	// Publish publishes payload on channel. It returns how many subscribers
	// the broker delivered it to, or -1 when the broker cannot tell.
	Publish(ctx context.Context, channel string, payload []byte) (receivers int, err error)
	// Close closes the connections the broker opened and stops its
	// goroutines. Connections the user handed in are left open.
	Close() error
}

// CountingPublisher is an optional Broker capability, for adapter authors
// whose Publish cannot count receivers (it returns -1, as on NATS):
// PublishCounted publishes and reports whether anybody subscribes channel
// (0, or at least 1). The engine uses it only on a client's own channel
// (messages with To, Asks with To), where a zero means "not on any node
// yet" and makes the engine publish again on the namespace channel. It may
// cost a round trip to the broker server per call.
type CountingPublisher interface {
	PublishCounted(ctx context.Context, channel string, payload []byte) (receivers int, err error)
}

// BrokerInspector is an optional Broker capability, for adapter authors:
// the broker asks its server what it sees. An Exchange on such a broker
// answers BrokerConns and NamespaceSubscribers with it, which tests,
// benchmarks and monitoring use to check that a node holds O(1) broker
// connections however many websocket clients it serves. Each call may cost
// a round trip to the broker server (or an HTTP request to its monitoring
// endpoint).
type BrokerInspector interface {
	// Conns returns how many connections this broker holds on the broker
	// server, as counted by the server.
	Conns(ctx context.Context) (int, error)
	// Subscribers returns how many subscriptions the broker server counts on
	// channel, over all nodes.
	Subscribers(ctx context.Context, channel string) (int, error)
}

// Options configures the engine. The zero value works; each field documents
// its default. Options is copied by New. The channel prefix is not an
// option: it is New's prefix argument, and the adapters' drop-in channel
// argument (redis) or SubjectPrefix field (nats).
type Options struct {
	// PublishTimeout bounds every broker publish. A publish that does not
	// complete in time fails: Publish returns false, Ask returns the error.
	// Default DefaultPublishTimeout (2s).
	PublishTimeout time.Duration
	// SubscribeTimeout bounds every broker subscribe, including the
	// per-connection ones. Default DefaultSubscribeTimeout (2s).
	SubscribeTimeout time.Duration
	// QueueSize is the number of messages that may wait for one websocket
	// connection. A connection that does not read fills its queue; further
	// messages for it are dropped (counted in Stats.Dropped, ErrSlowConsumer
	// reported) and no other connection waits for it. The queue holds
	// pointers to messages shared by all connections, so a full queue costs
	// about 8 bytes per message plus the messages themselves. Default
	// DefaultQueueSize (16384):
	// a burst of that many broadcasts reaches a client that reads at a
	// normal pace without loss.
	QueueSize int
	// ErrorHandler receives asynchronous errors: failed publishes,
	// subscribes, malformed payloads, slow consumers, broker connection
	// losses. It runs on a goroutine of the exchange's, one error at a time,
	// never under an engine lock, so it may call the exchange (Stats, ...).
	// Up to 256 errors wait for it; more are counted in
	// Stats.ReportsDropped. Default: errors are only counted, and logged
	// when Logger is set.
	ErrorHandler func(error)
	// Logger, when set, logs the same errors at Warn level, on the same
	// goroutine as ErrorHandler.
	Logger *slog.Logger
	// Retain is how long a node keeps the messages it publishes (broadcasts
	// and messages To one client, encoded) in its retransmit buffer, so that
	// a node that missed some, during a broker outage or while its
	// subscriptions were being restored, gets them by repair: late, in the
	// origin's order, exactly once. The buffer is also bounded by
	// RetainMessages and RetainBytes; the oldest go first. It costs the
	// payload plus about 64 bytes per message (Stats.Retained,
	// Stats.RetainedBytes). Default DefaultRetain (30s); negative: no
	// buffer, no repair (a message lost in an outage is counted in
	// Stats.Missed by the nodes that learn of it).
	Retain time.Duration
	// RetainMessages bounds the retransmit buffer's messages. Default
	// DefaultRetainMessages (65536).
	RetainMessages int
	// RetainBytes bounds the retransmit buffer's bytes, payloads plus 64
	// per message. Default DefaultRetainBytes (64 MiB).
	RetainBytes int
	// Addr is this node's address as other nodes and tools should see it
	// (Cluster.Nodes); optional, informational.
	Addr string
	// OnNodeMessage handles Cluster.Emit and Cluster.Survey from other
	// nodes: from is the sending node's id; the result is the survey's
	// reply (ignored for Emit). It runs on one of the engine's 4 control
	// goroutines, never under an engine lock; a slow handler delays other
	// nodes' requests to this node (up to 256 wait; more are dropped and
	// their askers see this node as not answering).
	OnNodeMessage func(from, event string, body []byte) ([]byte, error)
	// OnNodeJoin and OnNodeLeave, when set, are called when a node's first
	// heartbeat arrives and when it has sent none for NodeExpiry, on the
	// engine's timer goroutine (keep them short: repair requests wait).
	OnNodeJoin, OnNodeLeave func(Node)
	// Observer, when set, receives the latency of every broker publish
	// call and of every Server.Ask, for metrics (see Observer for when it
	// is called and what it costs). Default nil: nothing is measured.
	Observer Observer
}

// Stats is a snapshot of an Exchange's counters since it was created.
type Stats struct {
	// Published counts envelopes published to the broker.
	Published uint64
	// PublishErrors counts publishes that failed or timed out.
	PublishErrors uint64
	// Received counts envelopes read from the broker, own echoes included.
	Received uint64
	// Delivered counts messages written to local websocket connections.
	Delivered uint64
	// Dropped counts messages not queued because a connection's queue was
	// full (slow consumer).
	Dropped uint64
	// DecodeErrors counts payloads read from the broker that were not valid
	// envelopes; each was dropped.
	DecodeErrors uint64
	// Duplicates counts envelopes read from the broker that this node had
	// already read (a retried publish, or the same message through a second
	// broker); each was dropped.
	Duplicates uint64
	// Missed counts messages from other nodes that never arrived: gaps in
	// their sequence numbers that neither a late copy nor a repair filled
	// within ten seconds, or that the origin no longer buffered (ErrMissed is
	// reported once per gap).
	Missed uint64
	// Repaired counts messages from other nodes this node got by repair
	// (it asked their origin for them after seeing a gap).
	Repaired uint64
	// Resent counts messages this node sent again from its retransmit
	// buffer, at other nodes' request.
	Resent uint64
	// ReportsDropped counts errors not passed to Options.ErrorHandler and
	// Logger because 256 were already waiting for a slow handler.
	ReportsDropped uint64
	// Conns is the number of local websocket connections tracked now.
	Conns int
	// Queued is the number of messages waiting in connection queues now
	// (each at most Options.QueueSize).
	Queued int
	// Outbound is the number of broadcasts waiting in the node's publish
	// pipeline now (at most 8192 messages and 64 MiB).
	Outbound int
	// Subscriptions is the number of broker channels this node is
	// subscribed to now.
	Subscriptions int
	// PendingAsks is the number of Server.Ask calls waiting for a reply now.
	PendingAsks int
	// Held is the number of messages from other nodes held now because an
	// earlier message of their origin is missing (at most 65536 messages
	// and 64 MiB, all origins together; then the gap is given up).
	Held int
	// Retained and RetainedBytes measure the retransmit buffer now (see
	// Options.Retain).
	Retained, RetainedBytes int
}
