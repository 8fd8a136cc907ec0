package nats

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kataras/neffos"
	"github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout"
)

// ErrPayloadTooLarge is wrapped by the error of a publish whose envelope is
// larger than the NATS server's max_payload (1 MB by default). Such a
// message is not sent: Publish returns false and the error reaches
// Options.ErrorHandler; nothing else is disturbed (the connection stays up,
// the node's own clients still get the message).
//
// It wraps scaleout.ErrRejected: the engine does not retry such a publish.
var ErrPayloadTooLarge = fmt.Errorf("scaleout/nats: payload exceeds server max_payload: %w", scaleout.ErrRejected)

// DefaultFlusherTimeout is the nats.Options.FlusherTimeout NewStackExchange
// sets: half the engine's default PublishTimeout (see NewStackExchange).
const DefaultFlusherTimeout = time.Second

// StackExchange is a neffos.StackExchange on NATS core pub/sub (nats.go). It
// is a drop-in replacement for neffos's stackexchange/nats: same
// constructor, same With option, same exported SubjectPrefix field. Its
// methods are those of the engine (scaleout.Exchange), where their costs
// are documented; all are safe for concurrent use. The engine is built at
// the exchange's first method call (normally Init, from
// Server.UseStackExchange), with the SubjectPrefix and MonitorURL set then.
//
// A node holds one NATS connection, whatever the number of websocket
// clients, and one NATS subscription per namespace, one for the node and
// one per distinct connected client id, all on that connection.
type StackExchange struct {
	// SubjectPrefix is the first token of every subject the exchange uses.
	// Apps that share a NATS server set different prefixes. Default
	// scaleout.DefaultPrefix ("neffos"). It is read once, at the exchange's
	// first method call (normally Init, from Server.UseStackExchange): set
	// it before. A change after that makes Init fail with an error wrapping
	// scaleout.ErrInvalidConfig.
	SubjectPrefix string

	// MonitorURL is the base URL of the NATS server's HTTP monitoring
	// endpoint (nats-server -m 8222: "http://127.0.0.1:8222"). When set,
	// BrokerConns and NamespaceSubscribers ask the server's /connz and
	// /subsz; when empty they return an error wrapping
	// errors.ErrUnsupported. Like SubjectPrefix it is read once, at first
	// use. In a NATS cluster the counts are those of the server MonitorURL
	// names.
	MonitorURL string

	b      *broker
	opts   scaleout.Options
	once   sync.Once
	eng    *scaleout.Exchange
	prefix string // the prefix eng uses
}

var _ scaleout.StackExchange = (*StackExchange)(nil)

// With returns a nats.Option that replaces every option with options: pass
// it to NewStackExchange to configure the connection through struct fields.
// It replaces NoEcho, MaxReconnects and FlusherTimeout too, so
// NewStackExchange's defaults (NoEcho, reconnect forever, 1s write
// timeout) do not apply; options.Url, when set, is still
// split into Servers.
func With(options nats.Options) nats.Option {
	return func(opts *nats.Options) error {
		*opts = options
		return nil
	}
}

// NewStackExchange connects to NATS and returns a new exchange with the
// engine's default options. url is a NATS URL or a comma-separated list of
// them ("" means nats.DefaultURL); options are applied in order over
// nats.GetDefaultOptions() with NoEcho set, MaxReconnects -1 (reconnect
// forever) and FlusherTimeout DefaultFlusherTimeout (1s).
//
// FlusherTimeout bounds every socket write of the connection. nats.go
// writes while holding the connection's lock, and a publish that fills its
// buffer writes itself; with nats.go's default (1m) a broker that stops
// reading (a paused or overloaded server, a stalled network) blocks every
// Publish, and so neffos's Broadcast, for up to a minute. At 1s a Publish
// waits at most for one write already in progress plus its own, which
// keeps it within the engine's PublishTimeout (2s); a write that times out
// closes the connection and nats.go reconnects.
//
// It opens exactly one connection, named "scaleout-<random>" unless
// options set a Name, and returns an error wrapping
// scaleout.ErrBrokerUnavailable when no server answers (each server is
// tried for Options.Timeout, 2s by default). Handlers set in options
// (ErrorHandler, DisconnectErrHandler, ...) keep working; the exchange's
// reports are chained after them. The exchange owns the connection: Close
// closes it. An option that fails makes it return an error wrapping
// scaleout.ErrInvalidConfig.
func NewStackExchange(url string, options ...nats.Option) (*StackExchange, error) {
	return NewStackExchangeOptions(url, scaleout.Options{}, options...)
}

// NewStackExchangeOptions is NewStackExchange with engine options: its
// timeouts, per-connection queue and error handler.
func NewStackExchangeOptions(url string, engine scaleout.Options, options ...nats.Option) (*StackExchange, error) {
	opts := nats.GetDefaultOptions()
	if url == "" {
		url = nats.DefaultURL
	}
	opts.Url = url
	opts.NoEcho = true
	opts.MaxReconnect = -1
	opts.FlusherTimeout = DefaultFlusherTimeout
	for _, opt := range options {
		if opt == nil {
			continue
		}
		if err := opt(&opts); err != nil {
			return nil, fmt.Errorf("%w: scaleout/nats: option: %w", scaleout.ErrInvalidConfig, err)
		}
	}
	// As neffos: opts.Url may have been changed by an option, and its
	// comma-separated URLs join Servers. Unlike neffos, Url is then
	// cleared: nats.go parses it as one URL, which fails on a list.
	if opts.Url != "" {
		for s := range strings.SplitSeq(opts.Url, ",") {
			if s = strings.TrimSpace(s); s != "" {
				opts.Servers = append(opts.Servers, s)
			}
		}
		opts.Url = ""
	}
	if opts.Name == "" {
		opts.Name = "scaleout-" + randomHex()
	}
	b := newBroker(true)
	b.hookOptions(&opts)
	nc, err := opts.Connect()
	if err != nil {
		return nil, fmt.Errorf("%w: nats %s: %w", scaleout.ErrBrokerUnavailable, strings.Join(opts.Servers, ","), err)
	}
	b.nc = nc
	return newExchange(b, "", engine), nil
}

// NewStackExchangeConn returns an exchange that publishes and subscribes on
// the user's connection nc, with subjectPrefix as the initial SubjectPrefix
// and the engine options opts. The exchange never closes nc: Close only
// removes its own subscriptions.
//
// The exchange chains its reports after the handlers nc has now
// (ErrorHandler, DisconnectErrHandler); they stay installed after Close and
// then only call the previous handlers. It returns an error wrapping
// scaleout.ErrBrokerUnavailable when nc is closed. If nc was made without
// NoEcho the node also reads its own publishes back, which the engine
// ignores; NoEcho saves that traffic.
func NewStackExchangeConn(nc *nats.Conn, subjectPrefix string, opts scaleout.Options) (*StackExchange, error) {
	b, err := connBroker(nc)
	if err != nil {
		return nil, err
	}
	return newExchange(b, subjectPrefix, opts), nil
}

// NewBroker returns the broker side of an exchange on the user's
// connection, for an engine the user builds with scaleout.New, such as one
// over several brokers (scaleout.Redundant). Its subscriptions share nc;
// it never closes nc, and chains its reports after nc's handlers as
// NewStackExchangeConn does.
func NewBroker(nc *nats.Conn) (scaleout.Broker, error) {
	return connBroker(nc)
}

func connBroker(nc *nats.Conn) (*broker, error) {
	if nc == nil {
		return nil, fmt.Errorf("%w: scaleout/nats: nil connection", scaleout.ErrInvalidConfig)
	}
	if nc.IsClosed() {
		return nil, fmt.Errorf("%w: nats: %w", scaleout.ErrBrokerUnavailable, nats.ErrConnectionClosed)
	}
	b := newBroker(false)
	b.nc = nc
	b.hookConn(nc)
	return b, nil
}

func newExchange(b *broker, prefix string, opts scaleout.Options) *StackExchange {
	if prefix == "" {
		prefix = scaleout.DefaultPrefix
	}
	return &StackExchange{SubjectPrefix: prefix, b: b, opts: opts}
}

// engine returns the engine, built at the first call with the prefix and
// monitoring URL set then.
func (s *StackExchange) engine() *scaleout.Exchange {
	s.once.Do(func() {
		s.b.setMonitorURL(s.MonitorURL)
		s.prefix = s.SubjectPrefix
		if s.prefix == "" {
			s.prefix = scaleout.DefaultPrefix
		}
		s.eng = scaleout.New(s.b, s.prefix, s.opts)
	})
	return s.eng
}

// Init subscribes every namespace's subject once for this node
// (scaleout.Exchange.Init). neffos calls it from Server.UseStackExchange;
// registering the same exchange with a second server is fine as long as
// SubjectPrefix did not change.
func (s *StackExchange) Init(namespaces neffos.Namespaces) error {
	e := s.engine()
	if p := s.SubjectPrefix; p != s.prefix && (p != "" || s.prefix != scaleout.DefaultPrefix) {
		return fmt.Errorf("%w: scaleout/nats: SubjectPrefix %q set after the exchange started with %q", scaleout.ErrInvalidConfig, p, s.prefix)
	}
	return e.Init(namespaces)
}

// OnConnect implements neffos.StackExchange (scaleout.Exchange.OnConnect).
func (s *StackExchange) OnConnect(c *neffos.Conn) error { return s.engine().OnConnect(c) }

// OnDisconnect implements neffos.StackExchange.
func (s *StackExchange) OnDisconnect(c *neffos.Conn) { s.engine().OnDisconnect(c) }

// Publish implements neffos.StackExchange (scaleout.Exchange.Publish).
func (s *StackExchange) Publish(msgs []neffos.Message) bool { return s.engine().Publish(msgs) }

// Subscribe implements neffos.StackExchange.
func (s *StackExchange) Subscribe(c *neffos.Conn, namespace string) {
	s.engine().Subscribe(c, namespace)
}

// Unsubscribe implements neffos.StackExchange.
func (s *StackExchange) Unsubscribe(c *neffos.Conn, namespace string) {
	s.engine().Unsubscribe(c, namespace)
}

// Ask implements neffos.StackExchange (scaleout.Exchange.Ask).
func (s *StackExchange) Ask(ctx context.Context, msg neffos.Message, token string) (neffos.Message, error) {
	return s.engine().Ask(ctx, msg, token)
}

// NotifyAsk implements neffos.StackExchange.
func (s *StackExchange) NotifyAsk(msg neffos.Message, token string) error {
	return s.engine().NotifyAsk(msg, token)
}

// Close closes the exchange (scaleout.Exchange.Close) and the NATS
// connection when the exchange opened it. It is idempotent.
func (s *StackExchange) Close() error { return s.engine().Close() }

// Ready reports whether the node can serve across nodes: nil once Init's
// namespace subscriptions are confirmed and the broker is not known to be
// down; an error wrapping scaleout.ErrNotReady otherwise. For load
// balancers' readiness checks: atomic loads, no broker call.
func (s *StackExchange) Ready() error { return s.engine().Ready() }

// Cluster returns the cluster-wide operations (live nodes, connections on
// every node, remote disconnect and room changes, node-to-node messages):
// see scaleout.Cluster for each call's cost.
func (s *StackExchange) Cluster() *scaleout.Cluster { return s.engine().Cluster() }

// Stats returns the engine's counters (scaleout.Exchange.Stats): atomic
// loads, no lock.
func (s *StackExchange) Stats() scaleout.Stats { return s.engine().Stats() }

// BrokerConns returns how many connections this node holds on the NATS
// server MonitorURL names, from its /connz (one HTTP request). For tests
// and monitoring; see scaleout.Exchange.BrokerConns.
func (s *StackExchange) BrokerConns(ctx context.Context) (int, error) {
	return s.engine().BrokerConns(ctx)
}

// NamespaceSubscribers returns how many subscriptions the NATS server
// MonitorURL names counts on the subject of namespace, from its /subsz
// (one HTTP request): one per node. For tests and monitoring; see
// scaleout.Exchange.NamespaceSubscribers.
func (s *StackExchange) NamespaceSubscribers(ctx context.Context, namespace string) (int, error) {
	return s.engine().NamespaceSubscribers(ctx, namespace)
}

func randomHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Compile-time check that the drop-in signature matches neffos's.
var _ func(string, ...nats.Option) (*StackExchange, error) = NewStackExchange
