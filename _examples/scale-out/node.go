package main

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/stackexchange/nats"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// The chat page, built by `npm run build` in web/ and committed, so that
// `go run` needs no Node.js.
//
//go:embed web/dist
var webFiles embed.FS

const endpoint = "/ws"

// broker is what the nodes share: the address of a real broker (external,
// or the NATS server embedded here) or the in-process MemoryBroker.
type broker struct {
	kind     string
	natsURL  string
	redis    string
	memory   *scaleout.MemoryBroker
	embedded *natsserver.Server
	describe string
}

func startBroker(cfg config) (*broker, error) {
	b := &broker{kind: cfg.broker}
	switch cfg.broker {
	case brokerMemory:
		b.memory = scaleout.NewMemoryBroker()
		b.describe = "in-process (scaleout.MemoryBroker)"
	case brokerRedis:
		b.redis = cfg.redis
		b.describe = "Redis at " + cfg.redis
	case brokerNATS:
		b.natsURL = cfg.nats
		b.describe = "NATS at " + cfg.nats
	case brokerEmbedded:
		port := cfg.natsPort
		if port == 0 {
			port = natsserver.RANDOM_PORT
		}
		s, err := natsserver.NewServer(&natsserver.Options{
			Host:   "127.0.0.1",
			Port:   port,
			NoLog:  true,
			NoSigs: true, // Ctrl-C is ours: we shut the server down after the nodes.
		})
		if err != nil {
			return nil, fmt.Errorf("embedded nats server: %w", err)
		}
		s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			s.Shutdown()
			s.WaitForShutdown()
			return nil, fmt.Errorf("embedded nats server: not ready in 10s (port %d in use?)", cfg.natsPort)
		}
		b.embedded = s
		b.natsURL = s.ClientURL()
		b.describe = "NATS server embedded in this process at " + b.natsURL +
			" (-redis addr or -nats url for an external broker)"
	}
	return b, nil
}

// exchange returns a new exchange for one node: never shared, each node
// holds its own broker connection, exactly as on separate machines. addr
// is the node's scaleout.Options.Addr, which the other nodes see in
// Cluster.Nodes.
func (b *broker) exchange(prefix, addr string) (clusterExchange, error) {
	opts := scaleout.Options{Addr: addr}
	switch {
	case b.memory != nil:
		return scaleout.New(b.memory.Broker(), prefix, opts), nil
	case b.redis != "":
		return redis.NewStackExchangeOptions(redis.Config{Addr: b.redis}, prefix, opts)
	default:
		exc, err := nats.NewStackExchangeOptions(b.natsURL, opts)
		if err != nil {
			return nil, err
		}
		exc.SubjectPrefix = prefix
		return exc, nil
	}
}

// close shuts the embedded NATS server down, if there is one; call it after
// the exchanges are closed.
func (b *broker) close() {
	if b.embedded != nil {
		b.embedded.Shutdown()
		b.embedded.WaitForShutdown()
	}
}

// node is one neffos server with its own exchange and HTTP listener: what a
// separate machine behind a load balancer would run.
type node struct {
	name    string
	httpURL string // the chat page
	wsURL   string // the websocket endpoint
	exc     clusterExchange
	server  *neffos.Server
	chat    *chat
	http    *http.Server
	served  chan struct{} // closed when http.Serve returned
}

func startNode(name, host string, port int, b *broker, prefix string) (*node, error) {
	// Listen first, so a port in use fails the start, and so the node's
	// address (with a random port) is known to its exchange.
	ln, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	addr := ln.Addr().String()
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(tcp.Port))
	}
	httpURL := "http://" + addr + "/"
	exc, err := b.exchange(prefix, nodeAddr(name, httpURL))
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	ch := newChat(name)
	server := neffos.New(gorilla.DefaultUpgrader, ch.namespaces())
	server.IDGenerator = ch.connID
	if err := server.UseStackExchange(exc); err != nil {
		ln.Close()
		exc.Close()
		return nil, fmt.Errorf("%s: use stack exchange: %w", name, err)
	}
	ch.server = server
	n := &node{
		name:    name,
		httpURL: httpURL,
		wsURL:   "ws://" + addr + endpoint,
		exc:     exc,
		server:  server,
		chat:    ch,
		http:    &http.Server{Handler: routes(name, server, exc), ReadHeaderTimeout: 10 * time.Second},
		served:  make(chan struct{}),
	}
	go func() {
		defer close(n.served)
		if err := n.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("%s: %v", name, err)
		}
	}()
	return n, nil
}

// routes is a node's HTTP API: the page, the websocket endpoint and the
// cluster endpoints (cluster.go).
func routes(name string, server *neffos.Server, exc clusterExchange) *http.ServeMux {
	static, err := fs.Sub(webFiles, "web/dist")
	if err != nil {
		panic(err) // the embed pattern guarantees the folder
	}
	mux := http.NewServeMux()
	mux.Handle(endpoint, server)
	mux.Handle("/", noCache(http.FileServerFS(static)))
	// The page names its icon (favicon.svg); a browser or tool that asks for
	// /favicon.ico anyway gets the same file instead of a 404.
	mux.HandleFunc("/favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, static, "favicon.svg")
	})
	(&clusterAPI{node: name, cluster: exc.Cluster(), server: server}).routes(mux)

	// GET /ready, for load balancers: 200 once the broker connection is up
	// and the namespace subscriptions are confirmed, 503 during an outage.
	// (A Prometheus /metrics endpoint comes from the separate
	// github.com/neffos-contrib/scaleout/prometheus module; this example
	// stays in the root module, which does not depend on client_golang.)
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if err := exc.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})

	return mux
}

// noCache makes browsers revalidate the page and bundle, so a rebuilt
// bundle is picked up on reload.
func noCache(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

func shutdown(nodes []*node) {
	for _, n := range nodes {
		n.server.Close() // closes its websocket connections
	}
	for _, n := range nodes {
		n.chat.close() // waits for the Asks in flight
		if err := n.exc.Close(); err != nil {
			log.Printf("%s: close exchange: %v", n.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range nodes {
		if err := n.http.Shutdown(ctx); err != nil {
			log.Printf("%s: http shutdown: %v", n.name, err)
		}
		<-n.served
	}
}
