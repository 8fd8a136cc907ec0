// Command scale-out runs several neffos nodes in one process, each with its
// own exchange as separate machines would have, and shows a chat message
// sent to one node reaching clients connected to the others.
//
//	go run ./_examples/scale-out                        # 3 nodes on :8080-:8082, demo, Ctrl-C to stop
//	go run ./_examples/scale-out -once                  # demo, then exit (non-zero if a message was lost)
//	go run ./_examples/scale-out -redis 127.0.0.1:6379  # the same over Redis
//
// Without -redis (or $REDIS_ADDR) the nodes share scaleout's in-process
// MemoryBroker, so the demo needs no broker installed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

const (
	namespace = "chat"
	event     = "msg"
	endpoint  = "/ws"
	// demoTimeout bounds the whole demo: dialing, connecting and waiting for
	// every message to arrive.
	demoTimeout = 15 * time.Second
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("scale-out: ")

	defaultRedis := os.Getenv("REDIS_ADDR")
	var cfg config
	flag.IntVar(&cfg.nodes, "nodes", 3, "number of neffos nodes to start")
	flag.IntVar(&cfg.port, "port", 8080, "port of the first node; node i listens on port+i")
	flag.StringVar(&cfg.redis, "redis", defaultRedis, "Redis address (default $REDIS_ADDR; empty: in-process broker)")
	flag.StringVar(&cfg.prefix, "prefix", "scaleout-demo", "channel prefix shared by the nodes")
	flag.BoolVar(&cfg.demo, "demo", true, "dial one Go client per node and exchange a message each")
	flag.BoolVar(&cfg.once, "once", false, "exit after the demo (non-zero if a client missed a message)")
	flag.Parse()
	if cfg.nodes < 1 {
		log.Fatal("-nodes must be at least 1")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, restore the default handling, so a second
	// Ctrl-C kills a shutdown that hangs.
	go func() {
		<-ctx.Done()
		stop()
	}()
	if err := run(ctx, cfg); err != nil {
		stop()
		log.Fatal(err)
	}
}

type config struct {
	nodes, port   int
	redis, prefix string
	demo, once    bool
}

// node is one neffos server with its own exchange and HTTP listener: what a
// separate machine behind a load balancer would run.
type node struct {
	name   string
	url    string
	exc    scaleout.StackExchange
	server *neffos.Server
	http   *http.Server
	served chan struct{} // closed when http.Serve returned
}

func run(ctx context.Context, cfg config) error {
	var nodes []*node
	var memory *scaleout.MemoryBroker
	if cfg.redis == "" {
		memory = scaleout.NewMemoryBroker()
		log.Printf("broker: in-process (scaleout.MemoryBroker); use -redis addr for Redis")
	} else {
		log.Printf("broker: Redis at %s", cfg.redis)
	}
	// Shut down whatever was started, also when a later node fails to start.
	defer func() { shutdown(nodes) }()
	for i := range cfg.nodes {
		n, err := startNode(fmt.Sprintf("node%d", i), cfg.port+i, memory, cfg.redis, cfg.prefix)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
		log.Printf("%s serving %s", n.name, n.url)
	}

	if cfg.demo {
		clients, err := demo(ctx, nodes)
		// Clients first: they are the other side of the nodes' connections.
		for _, c := range clients {
			c.Close()
		}
		if err != nil {
			return err
		}
	}
	if cfg.once {
		return nil
	}
	log.Printf("serving until Ctrl-C")
	<-ctx.Done()
	log.Printf("shutting down")
	return nil
}

func startNode(name string, port int, memory *scaleout.MemoryBroker, redisAddr, prefix string) (*node, error) {
	// One exchange per node, never shared: each node holds its own broker
	// connections, exactly as on separate machines.
	var exc scaleout.StackExchange
	if memory != nil {
		exc = scaleout.New(memory.Broker(), scaleout.Options{Prefix: prefix})
	} else {
		rexc, err := redis.NewStackExchange(redis.Config{Addr: redisAddr}, prefix)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		exc = rexc
	}
	server := neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{
		namespace: neffos.Events{
			// A chat message goes to everyone else, on every node: the
			// exchange carries it to the other nodes' clients.
			event: func(c *neffos.NSConn, msg neffos.Message) error {
				c.Conn.Server().Broadcast(c, msg)
				return nil
			},
		},
	})
	if err := server.UseStackExchange(exc); err != nil {
		exc.Close()
		return nil, fmt.Errorf("%s: use stack exchange: %w", name, err)
	}
	// Listen here, not in the goroutine, so a port in use fails the start.
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		server.Close()
		exc.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	mux := http.NewServeMux()
	mux.Handle(endpoint, server)
	n := &node{
		name:   name,
		url:    "ws://" + ln.Addr().String() + endpoint,
		exc:    exc,
		server: server,
		http:   &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		served: make(chan struct{}),
	}
	go func() {
		defer close(n.served)
		if err := n.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("%s: %v", name, err)
		}
	}()
	return n, nil
}

func shutdown(nodes []*node) {
	for _, n := range nodes {
		n.server.Close() // closes its websocket connections
	}
	for _, n := range nodes {
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

// demo dials one client per node, lets each send one message and waits
// until every client got the message of every other client. It returns the
// clients it dialed, for the caller to close.
func demo(ctx context.Context, nodes []*node) ([]*neffos.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()

	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = "client@" + n.name
	}
	t := newTally(names)

	var clients []*neffos.Client
	var conns []*neffos.NSConn
	for i, n := range nodes {
		name := names[i]
		c, err := dial(ctx, name, n.url, neffos.Namespaces{
			namespace: neffos.Events{
				event: func(_ *neffos.NSConn, msg neffos.Message) error {
					fmt.Printf("%s got %q\n", name, msg.Body)
					t.add(name, string(msg.Body))
					return nil
				},
			},
		})
		if err != nil {
			return clients, fmt.Errorf("%s: dial %s: %w", name, n.url, err)
		}
		clients = append(clients, c)
		ns, err := c.Connect(ctx, namespace)
		if err != nil {
			return clients, fmt.Errorf("%s: connect %q: %w", name, namespace, err)
		}
		conns = append(conns, ns)
	}

	// Every client is connected before anyone speaks, so no message can
	// miss a client that simply was not there yet.
	for i, ns := range conns {
		if !ns.Emit(event, []byte("hello from "+names[i])) {
			return clients, fmt.Errorf("%s: emit failed", names[i])
		}
	}

	if err := t.wait(ctx); err != nil {
		return clients, err
	}
	fmt.Printf("ok: each of %d clients on %d nodes got the %d messages sent on the other nodes\n",
		len(nodes), len(nodes), len(nodes)-1)
	return clients, nil
}

// dialAttempt bounds one handshake; see dial.
const dialAttempt = 3 * time.Second

// dial is neffos.Dial bounded by ctx, retried when a handshake stalls.
//
// neffos's Dial honours ctx only while opening the websocket; it then waits
// for the server's ACK with no deadline. And v0.0.24's waiterOnce
// (waiter_once.go, fixed in v0.0.25) can lose a wake-up when unwait runs
// between wait's two checks, on either side of the handshake: Dial then
// waits forever (seen about once in 30 runs of this demo). A fresh
// connection is unlikely to hit the same race, so a stalled attempt is
// abandoned and retried instead of hanging the demo or CI.
func dial(ctx context.Context, name, url string, h neffos.ConnHandler) (*neffos.Client, error) {
	type result struct {
		c   *neffos.Client
		err error
	}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, dialAttempt)
		ch := make(chan result, 1)
		go func() {
			c, err := neffos.Dial(actx, gorilla.DefaultDialer, url, h)
			ch <- result{c, err}
		}()
		select {
		case r := <-ch:
			cancel()
			return r.c, r.err
		case <-actx.Done():
			cancel()
			// The stalled Dial returns once its node closes the
			// connection (at shutdown); close what it yields.
			go func() {
				if r := <-ch; r.c != nil {
					r.c.Close()
				}
			}()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			log.Printf("%s: handshake with %s stalled after %s (attempt %d), retrying", name, url, dialAttempt, attempt)
		}
	}
}

// tally records which messages each client received.
type tally struct {
	mu      sync.Mutex
	names   []string
	got     map[string]map[string]int // client -> body -> times received
	changed chan struct{}             // signalled (not closed) on every add
}

func newTally(names []string) *tally {
	t := &tally{names: names, got: make(map[string]map[string]int), changed: make(chan struct{}, 1)}
	for _, n := range names {
		t.got[n] = make(map[string]int)
	}
	return t
}

func (t *tally) add(client, body string) {
	t.mu.Lock()
	t.got[client][body]++
	t.mu.Unlock()
	select {
	case t.changed <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// problems lists what is still missing or wrong: a message not received, a
// duplicate, a client's own message echoed back to it.
func (t *tally) problems() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, to := range t.names {
		for _, from := range t.names {
			body := "hello from " + from
			n := t.got[to][body]
			switch {
			case to == from && n > 0:
				out = append(out, fmt.Sprintf("%s got its own message back", to))
			case to != from && n == 0:
				out = append(out, fmt.Sprintf("%s missed %q", to, body))
			case n > 1:
				out = append(out, fmt.Sprintf("%s got %q %d times", to, body, n))
			}
		}
	}
	return out
}

// wait returns nil once every client got every other client's message, or
// an error listing what is missing when ctx ends first.
func (t *tally) wait(ctx context.Context) error {
	for {
		p := t.problems()
		if len(p) == 0 {
			return nil
		}
		select {
		case <-t.changed:
		case <-ctx.Done():
			return fmt.Errorf("demo: %w: %q", ctx.Err(), p)
		}
	}
}
