package nats_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/nats"
)

// callSlack is what a bounded call may take beyond its timeout on a loaded
// machine under -race: scheduling, not waiting.
const callSlack = 500 * time.Millisecond

// serverSubjectList returns the subject of every subscription the NATS
// server holds under prefix (a subject twice when two clients hold it).
func serverSubjectList(t testing.TB, monitor, prefix string) []string {
	t.Helper()
	var sz struct {
		List []struct {
			Subject string `json:"subject"`
		} `json:"subscriptions_list"`
	}
	monitorGet(t, monitor+"/subsz?subs=1&limit=100000", &sz)
	var subjects []string
	for _, s := range sz.List {
		if strings.HasPrefix(s.Subject, prefix+".") {
			subjects = append(subjects, s.Subject)
		}
	}
	return subjects
}

// totalConnections returns how many client connections the NATS server
// accepted since it started (/varz total_connections), failed ones
// included.
func totalConnections(t testing.TB, monitor string) int {
	t.Helper()
	var vz struct {
		Total int `json:"total_connections"`
	}
	monitorGet(t, monitor+"/varz", &vz)
	return vz.Total
}

func monitorGet(t testing.TB, url string, v any) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("monitoring %s: %v", url, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("monitoring %s: %v", url, err)
	}
}

// TestBrokerNeverReachable starts with NATS unreachable: NewStackExchange
// against a port nobody listens on, and against a nats-server that accepts
// TCP but never answers (stopped with SIGSTOP before the exchange dials),
// returns an error wrapping scaleout.ErrBrokerUnavailable within nats.go's
// connect Timeout and leaves no goroutine.
func TestBrokerNeverReachable(t *testing.T) {
	t.Run("Refused", func(t *testing.T) {
		port, err := brokertest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		testUnreachable(t, "nats://127.0.0.1:"+strconv.Itoa(port), natsgo.DefaultTimeout)
	})
	t.Run("Silent", func(t *testing.T) {
		broker := brokertest.NewNATS(t)
		if err := broker.Pause(); err != nil {
			t.Fatal(err)
		}
		testUnreachable(t, broker.URL, natsgo.DefaultTimeout)
		if err := broker.Resume(); err != nil {
			t.Fatal(err)
		}
	})
}

func testUnreachable(t *testing.T, url string, timeout time.Duration) {
	g0 := runtime.NumGoroutine()
	start := time.Now()
	exc, err := nats.NewStackExchange(url)
	took := time.Since(start)
	if exc != nil {
		exc.Close()
		t.Fatal("NewStackExchange returned an exchange for an unreachable server")
	}
	if !errors.Is(err, scaleout.ErrBrokerUnavailable) {
		t.Fatalf("err = %v, want one wrapping scaleout.ErrBrokerUnavailable", err)
	}
	if took > timeout+callSlack {
		t.Errorf("NewStackExchange took %v, connect Timeout is %v", took, timeout)
	}
	g1 := goroutinesAtMost(g0, 5*time.Second)
	t.Logf("NewStackExchange(%s) failed in %v: %v; goroutines %d before, %d after", url, took.Round(time.Millisecond), err, g0, g1)
	if g1 > g0 {
		t.Errorf("goroutines: %d before NewStackExchange, %d after it failed", g0, g1)
	}
}
