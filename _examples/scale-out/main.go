// Command scale-out runs a neffos chat on several nodes that act as one:
// each node has its own exchange, as separate machines behind a load
// balancer would, and a message sent through one node reaches the clients
// of the others.
//
//	go run ./_examples/scale-out                        # embedded NATS + 3 nodes on :8080-:8082, Ctrl-C to stop
//	go run ./_examples/scale-out -redis 127.0.0.1:6379  # the same over Redis
//	go run ./_examples/scale-out -nats nats://127.0.0.1:4222
//	go run ./_examples/scale-out -broker memory         # in-process broker, no network
//	go run ./_examples/scale-out -once                  # the Go-client demo, then exit (non-zero if a message was lost)
//
// Every node serves the chat page (web/dist, embedded) at / and the
// websocket endpoint at /ws: open http://127.0.0.1:8080/ and
// http://127.0.0.1:8081/ in two browser windows.
//
// Without -redis, -nats, $REDIS_ADDR or $NATS_URL the nodes share a real
// NATS server started inside this process on a random loopback port
// (-nats-port to choose it), so the demo needs no broker installed.
//
// With -nodes 1 the command is one node of a larger deployment, as in
// docker-compose.yml: several processes on one broker.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("scale-out: ")

	var cfg config
	flag.IntVar(&cfg.nodes, "nodes", 3, "number of neffos nodes to start in this process")
	flag.StringVar(&cfg.host, "host", "127.0.0.1", "address the nodes listen on (0.0.0.0 in a container)")
	flag.IntVar(&cfg.port, "port", 8080, "port of the first node; node i listens on port+i (0: random ports)")
	flag.StringVar(&cfg.broker, "broker", "", "broker: embedded, nats, redis or memory (default: -redis/-nats if set, else $NATS_URL, else $REDIS_ADDR, else embedded)")
	flag.StringVar(&cfg.redis, "redis", os.Getenv("REDIS_ADDR"), "Redis address to use instead of the embedded NATS server (default $REDIS_ADDR)")
	flag.StringVar(&cfg.nats, "nats", os.Getenv("NATS_URL"), "NATS URL to use instead of the embedded NATS server (default $NATS_URL)")
	flag.IntVar(&cfg.natsPort, "nats-port", 0, "port of the embedded NATS server on 127.0.0.1 (0: random)")
	flag.StringVar(&cfg.prefix, "prefix", "scaleout-demo", "channel (subject) prefix shared by the nodes")
	flag.StringVar(&cfg.name, "name", "", "node name (default node1, node2, ...; with -nodes 1 the host name)")
	flag.BoolVar(&cfg.demo, "demo", true, "dial one Go client per node and exchange a chat message each")
	flag.BoolVar(&cfg.once, "once", false, "exit after the demo (non-zero if a client missed a message)")
	flag.Parse()
	flag.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "redis":
			cfg.redisSet = true
		case "nats":
			cfg.natsSet = true
		}
	})
	if cfg.nodes < 1 {
		log.Fatal("-nodes must be at least 1")
	}
	if cfg.port < 0 || cfg.port+cfg.nodes-1 > 65535 {
		log.Fatal("-port out of range")
	}
	if err := cfg.resolveBroker(); err != nil {
		log.Fatal(err)
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
	nodes, port, natsPort int
	host, broker, prefix  string
	redis, nats, name     string
	redisSet, natsSet     bool
	demo, once            bool
}

const (
	brokerEmbedded = "embedded"
	brokerNATS     = "nats"
	brokerRedis    = "redis"
	brokerMemory   = "memory"
)

// resolveBroker settles cfg.broker. An explicit -broker wins; then an
// explicit -redis or -nats; then $NATS_URL, then $REDIS_ADDR; then the
// embedded NATS server.
func (cfg *config) resolveBroker() error {
	switch cfg.broker {
	case brokerEmbedded, brokerMemory:
		return nil
	case brokerRedis:
		if cfg.redis == "" {
			cfg.redis = "127.0.0.1:6379"
		}
		return nil
	case brokerNATS:
		if cfg.nats == "" {
			return errors.New("-broker nats needs -nats url or $NATS_URL (-broker embedded starts a NATS server in this process)")
		}
		return nil
	case "":
	default:
		return fmt.Errorf("-broker %q: want embedded, nats, redis or memory", cfg.broker)
	}
	switch {
	case cfg.redisSet && cfg.natsSet && cfg.redis != "" && cfg.nats != "":
		return errors.New("-redis and -nats both set: pick one")
	case cfg.redisSet && cfg.redis != "":
		cfg.broker = brokerRedis
	case cfg.natsSet && cfg.nats != "":
		cfg.broker = brokerNATS
	case cfg.nats != "":
		cfg.broker = brokerNATS
		if cfg.redis != "" {
			log.Printf("$NATS_URL and $REDIS_ADDR both set: using NATS (-redis %s for Redis)", cfg.redis)
		}
	case cfg.redis != "":
		cfg.broker = brokerRedis
	default:
		cfg.broker = brokerEmbedded
	}
	return nil
}

func run(ctx context.Context, cfg config) error {
	b, err := startBroker(cfg)
	if err != nil {
		return err
	}
	log.Printf("broker: %s", b.describe)

	var nodes []*node
	// Shut down whatever was started, also when a later node fails to start:
	// neffos servers, exchanges and listeners first, the broker last.
	defer func() {
		shutdown(nodes)
		b.close()
	}()
	names := nodeNames(cfg)
	for i := range cfg.nodes {
		port := cfg.port
		if port != 0 {
			port += i
		}
		n, err := startNode(names[i], cfg.host, port, b, cfg.prefix)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	// Every node can show links to the others on its page.
	var peers []peer
	for _, n := range nodes {
		peers = append(peers, peer{Name: n.name, URL: n.httpURL})
	}
	for _, n := range nodes {
		n.chat.setPeers(peers)
		log.Printf("%s serving %s (websocket %s)", n.name, n.httpURL, n.wsURL)
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
	if len(nodes) > 1 {
		log.Printf("chat: open %s and %s in two browser windows", nodes[0].httpURL, nodes[1].httpURL)
	} else {
		log.Printf("chat: open %s", nodes[0].httpURL)
	}
	log.Printf("ready: %d node(s); Ctrl-C to stop", len(nodes))
	<-ctx.Done()
	log.Printf("shutting down")
	return nil
}

// nodeNames returns the name of each node: -name (with a number appended
// when there are several), else node1, node2, ..., else with one node the
// host name, which tells replicas of a container apart.
func nodeNames(cfg config) []string {
	names := make([]string, cfg.nodes)
	for i := range names {
		switch {
		case cfg.name != "" && cfg.nodes == 1:
			names[i] = cfg.name
		case cfg.name != "":
			names[i] = fmt.Sprintf("%s%d", cfg.name, i+1)
		case cfg.nodes == 1:
			if h, err := os.Hostname(); err == nil && h != "" {
				names[i] = strings.SplitN(h, ".", 2)[0]
				continue
			}
			names[i] = "node1"
		default:
			names[i] = fmt.Sprintf("node%d", i+1)
		}
	}
	return names
}
