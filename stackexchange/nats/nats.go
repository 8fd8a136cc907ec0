package nats

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
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
var ErrPayloadTooLarge = errors.New("scaleout/nats: payload exceeds server max_payload")

// flusherTimeout is NewStackExchange's nats.Options.FlusherTimeout: half
// the engine's default PublishTimeout (see NewStackExchange).
const flusherTimeout = time.Second

// defaultPrefix is the subject prefix of neffos's own stackexchange/nats.
const defaultPrefix = "neffos"

// StackExchange is a neffos.StackExchange on NATS core pub/sub (nats.go). It
// is a drop-in replacement for neffos's stackexchange/nats: same
// constructor, same With option, same exported SubjectPrefix field. All its
// other methods are the engine's (scaleout.Exchange); see there for what
// they cost.
//
// A node holds one NATS connection, whatever the number of websocket
// clients, and one NATS subscription per namespace, one for the node and
// one per distinct connected client id, all on that connection.
type StackExchange struct {
	*scaleout.Exchange

	// SubjectPrefix is the first token of every subject the exchange uses.
	// Apps that share a NATS server set different prefixes. Default
	// "neffos". It may be changed after construction, before the exchange
	// is registered with Server.UseStackExchange (which calls Init, where
	// it takes effect); changing it later has no effect and makes Init
	// fail.
	SubjectPrefix string

	// MonitorURL is the base URL of the NATS server's HTTP monitoring
	// endpoint (nats-server -m 8222: "http://127.0.0.1:8222"). When set, the
	// scaleout.Inspector methods (BrokerConns, NamespaceSubscribers) ask the
	// server's /connz and /subsz; when empty they return an error wrapping
	// errors.ErrUnsupported. Like SubjectPrefix it is read by Init. In a
	// NATS cluster the counts are those of the server MonitorURL names.
	MonitorURL string

	b       *broker
	mu      sync.Mutex // guards applied
	applied string     // prefix the engine uses now
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

// NewStackExchange connects to NATS and returns a new exchange. url is a
// NATS URL or a comma-separated list of them ("" means nats.DefaultURL);
// options are applied in order over nats.GetDefaultOptions() with NoEcho set,
// MaxReconnects -1 (reconnect forever) and FlusherTimeout 1s.
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
// closes it.
//
// Engine options (timeouts, ErrorHandler, QueueSize) keep their defaults
// here; use NewStackExchangeConn to set them.
func NewStackExchange(url string, options ...nats.Option) (*StackExchange, error) {
	opts := nats.GetDefaultOptions()
	if url == "" {
		url = nats.DefaultURL
	}
	opts.Url = url
	opts.NoEcho = true
	opts.MaxReconnect = -1
	opts.FlusherTimeout = flusherTimeout
	for _, opt := range options {
		if opt == nil {
			continue
		}
		if err := opt(&opts); err != nil {
			return nil, err
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
	return newExchange(b, scaleout.Options{Prefix: defaultPrefix}), nil
}

// NewStackExchangeConn returns an exchange that publishes and subscribes on
// the user's connection nc, with the engine options opts (opts.Prefix is
// the subject prefix, "" means "neffos"; SubjectPrefix starts with it). The
// exchange never closes nc: Close only removes its own subscriptions.
//
// The exchange chains its reports after the handlers nc has now
// (ErrorHandler, DisconnectErrHandler); they stay installed after Close and
// then only call the previous handlers. It returns an error wrapping
// scaleout.ErrBrokerUnavailable when nc is closed. If nc was made without
// NoEcho the node also reads its own publishes back, which the engine
// ignores; NoEcho saves that traffic.
func NewStackExchangeConn(nc *nats.Conn, opts scaleout.Options) (*StackExchange, error) {
	if nc == nil {
		return nil, errors.New("scaleout/nats: nil connection")
	}
	if nc.IsClosed() {
		return nil, fmt.Errorf("%w: nats: %w", scaleout.ErrBrokerUnavailable, nats.ErrConnectionClosed)
	}
	b := newBroker(false)
	b.nc = nc
	b.hookConn(nc)
	if opts.Prefix == "" {
		opts.Prefix = defaultPrefix
	}
	return newExchange(b, opts), nil
}

func newExchange(b *broker, opts scaleout.Options) *StackExchange {
	return &StackExchange{
		Exchange:      scaleout.New(b, opts),
		SubjectPrefix: opts.Prefix,
		b:             b,
		applied:       opts.Prefix,
	}
}

// Init applies SubjectPrefix and MonitorURL, then subscribes every
// namespace's subject once for this node (scaleout.Exchange.Init). neffos
// calls it from Server.UseStackExchange; registering the same exchange with
// a second server is fine as long as SubjectPrefix did not change.
func (s *StackExchange) Init(namespaces neffos.Namespaces) error {
	s.b.setMonitorURL(s.MonitorURL)
	prefix := s.SubjectPrefix
	if prefix == "" {
		prefix = defaultPrefix
	}
	s.mu.Lock()
	if err := s.Exchange.SetPrefix(prefix); err != nil {
		// Started already (a second server, or a call before Init): fine
		// while the prefix is the one in use; the engine's Init below
		// reports a failed start by itself.
		if prefix != s.applied {
			s.mu.Unlock()
			return fmt.Errorf("scaleout/nats: SubjectPrefix %q set after the exchange started with %q: %w", prefix, s.applied, err)
		}
	} else {
		s.applied = prefix
	}
	s.mu.Unlock()
	return s.Exchange.Init(namespaces)
}

func randomHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Compile-time check that the drop-in signature matches neffos's.
var _ func(string, ...nats.Option) (*StackExchange, error) = NewStackExchange
