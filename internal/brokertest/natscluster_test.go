package brokertest

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestNATSCluster: three members with routes to each other; a member killed
// and restarted has its routes to both others again, and they to it.
func TestNATSCluster(t *testing.T) {
	c := NewNATSCluster(t, 3)
	if len(c.Servers) != 3 || strings.Count(c.URLs, ",") != 2 {
		t.Fatalf("%d servers, URLs %q", len(c.Servers), c.URLs)
	}
	if got, want := c.URLsFrom(1), c.Servers[1].URL+","+c.Servers[2].URL+","+c.Servers[0].URL; got != want {
		t.Errorf("URLsFrom(1) = %q, want %q", got, want)
	}
	hc := &http.Client{Timeout: time.Second}
	killed := c.Servers[1]
	pid := killed.PID()
	if err := killed.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := killed.Restart(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if killed.PID() == pid || killed.PID() == 0 {
		t.Fatalf("pid %d before the kill, %d after the restart", pid, killed.PID())
	}
	for i, s := range c.Servers {
		if err := s.waitRoutes(routesTimeout); err != nil {
			t.Fatalf("member %d after member 1's restart: %v", i, err)
		}
		n, err := s.routedPeers(hc)
		t.Logf("member %d (%s): routes to %d other members (%v)", i, s.URL, n, err)
	}
}
