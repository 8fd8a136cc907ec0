package brokertest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// routesTimeout bounds how long a cluster member may take to have its
// routes to every other member up, at start and after Restart.
const routesTimeout = 15 * time.Second

// NATSCluster is a NATS cluster of a test's own: nats-server processes
// started by StartNATSCluster, each on free loopback ports (client,
// cluster and monitoring), with routes to every other member (member i
// has explicit routes to members 0..i-1; the later members route to it).
//
// Each member is a *NATS: Kill, Pause, Resume and Stop work as for a single
// server, by its PID. Restart starts the member again on the same ports
// with the same routes and returns once its routes to every other member
// are up again, so a restarted member has rejoined the cluster. Each member
// is therefore a stackexchangetest.Process.
type NATSCluster struct {
	// Servers are the members, in start order.
	Servers []*NATS
	// URLs is every member's client URL, comma-separated, in member order:
	// the URL list nats.Connect and NewStackExchange accept.
	URLs string
}

// natsPeers makes a server a cluster member with routes to peers others.
func natsPeers(peers int) NATSOption { return func(c *natsConfig) { c.peers = peers } }

// StartNATSCluster starts n (at least 2) nats-server processes forming one
// cluster, and waits until every member has its routes to all the others
// (read from its monitoring endpoint's /routez, which is always on for a
// member: MonitorURL is set). options apply to every member, as for
// StartNATS; the cluster's own flags (--cluster, --routes,
// --cluster_name) come after them. Stop it with Stop.
func StartNATSCluster(n int, options ...NATSOption) (*NATSCluster, error) {
	if n < 2 {
		return nil, fmt.Errorf("brokertest: a NATS cluster needs at least 2 servers, not %d", n)
	}
	routes := make([]string, n)
	for i := range routes {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		routes[i] = "nats://127.0.0.1:" + strconv.Itoa(port)
	}
	name := fmt.Sprintf("scaleout-%d", time.Now().UnixNano())
	c := &NATSCluster{}
	for i := range n {
		// Explicit routes to the members started before: they listen
		// already, so no route is refused at start and then formed twice
		// (a full mesh of explicit routes is, and resolves "Duplicate
		// Route" a second later). Every pair has one explicit side, which
		// retries: a restarted member is routed again either way.
		args := []string{"--cluster", routes[i], "--cluster_name", name}
		if i > 0 {
			args = append(args, "--routes", strings.Join(routes[:i], ","))
		}
		opts := append(append([]NATSOption(nil), options...), NATSMonitor(), natsPeers(n-1), NATSArgs(args...))
		s, err := StartNATS(opts...)
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("cluster member %d: %w", i, err)
		}
		c.Servers = append(c.Servers, s)
	}
	for i, s := range c.Servers {
		if err := s.waitRoutes(routesTimeout); err != nil {
			c.Stop()
			return nil, fmt.Errorf("cluster member %d: %w", i, err)
		}
	}
	c.URLs = c.URLsFrom(0)
	return c, nil
}

// NewNATSCluster is StartNATSCluster for a test: a missing binary skips the
// test (fails it in CI), and the cluster is stopped by t.Cleanup.
func NewNATSCluster(t testing.TB, n int, options ...NATSOption) *NATSCluster {
	t.Helper()
	if _, err := NATSServerBin(); err != nil {
		Missing(t, "nats-server", err.Error())
	}
	c, err := StartNATSCluster(n, options...)
	if err != nil {
		t.Fatalf("start a NATS cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, s := range c.Servers {
				t.Logf("NATS cluster member %d (%s) log tail:\n%s", i, s.URL, natsLogTail(s.Log))
			}
		}
		c.Stop()
	})
	return c
}

// URLsFrom returns the members' client URLs, comma-separated, starting
// with member first and going on in member order (first+1, ..., wrapping
// around). With nats.DontRandomize a client connects to member first and,
// when it fails, to the next one.
func (c *NATSCluster) URLsFrom(first int) string {
	urls := make([]string, len(c.Servers))
	for i := range c.Servers {
		urls[i] = c.Servers[(first+i)%len(c.Servers)].URL
	}
	return strings.Join(urls, ",")
}

// Stop stops every member (by PID) and removes their directories. It is
// idempotent.
func (c *NATSCluster) Stop() {
	for _, s := range c.Servers {
		s.Stop()
	}
}

// waitRoutes waits until the server's /routez lists routes to n.peers
// distinct servers, the process exits, or d passes.
func (n *NATS) waitRoutes(d time.Duration) error {
	n.mu.Lock()
	exited := n.waited
	n.mu.Unlock()
	hc := &http.Client{Timeout: time.Second}
	got := 0
	err := poll(exited, d, func(context.Context) error {
		var err error
		got, err = n.routedPeers(hc)
		if err == nil && got < n.peers {
			err = fmt.Errorf("%d routed", got)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: routes to %d of %d other members after %v (%v); log %s: %s",
			n.Addr, got, n.peers, d, err, n.Log, natsLogTail(n.Log))
	}
	return nil
}

// routedPeers returns how many distinct servers the server has routes to.
// (nats-server 2.10+ pools several routes per peer; 2.9 has one.)
func (n *NATS) routedPeers(hc *http.Client) (int, error) {
	resp, err := hc.Get(n.MonitorURL + "/routez")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/routez: %s", resp.Status)
	}
	var rz struct {
		Routes []struct {
			RemoteID string `json:"remote_id"`
		} `json:"routes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&rz); err != nil {
		return 0, fmt.Errorf("/routez: %w", err)
	}
	peers := map[string]bool{}
	for _, r := range rz.Routes {
		if r.RemoteID != "" {
			peers[r.RemoteID] = true
		}
	}
	return len(peers), nil
}
