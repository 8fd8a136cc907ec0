package prometheus_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/neffostest"
	"github.com/neffos-contrib/scaleout/internal/testkit"
	"github.com/neffos-contrib/scaleout/prometheus"
)

func TestMain(m *testing.M) { os.Exit(testkit.LeakCheck(m.Run(), 0)) }

const ns = "chat"

// node is a neffos server with its own exchange on a shared in-process
// broker, and its /metrics and /ready on a real HTTP server.
type node struct {
	srv     *neffos.Server
	exc     *scaleout.Exchange
	ws      string // websocket URL
	metrics string // base URL of /metrics and /ready
}

func startNode(t *testing.T, mb *scaleout.MemoryBroker, name string) *node {
	t.Helper()
	obs := prometheus.NewObserver(prometheus.Options{ConstLabels: prom.Labels{"node": name}})
	exc := scaleout.New(mb.Broker(), "", scaleout.Options{Observer: obs})
	reg := prom.NewPedanticRegistry()
	reg.MustRegister(obs, prometheus.NewCollector(exc, prometheus.Options{ConstLabels: prom.Labels{"node": name}}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	mux.Handle("/ready", prometheus.ReadyHandler(exc))
	hs := httptest.NewServer(mux)

	n := &node{exc: exc, metrics: hs.URL}
	if code, body := get(t, n.metrics+"/ready"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not ready") {
		t.Fatalf("/ready before Init: %d %q, want 503 and the reason", code, body)
	}
	n.srv = neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{ns: neffos.Events{}})
	if err := n.srv.UseStackExchange(exc); err != nil {
		t.Fatal(err)
	}
	n.ws = neffostest.Serve(t, n.srv)
	t.Cleanup(func() {
		n.srv.Close()
		_ = exc.Close() // neffos v0.0.24's Server.Close does not
		hs.Close()
	})
	return n
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape is one /metrics response, raw and parsed.
type scrape struct {
	raw      []byte
	families map[string]*dto.MetricFamily
}

func scrapeOf(t *testing.T, n *node) scrape {
	t.Helper()
	code, body := get(t, n.metrics+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return scrape{raw: []byte(body), families: fams}
}

// value returns the value of the series of name whose labels include
// labels (name=value pairs); for a histogram, its sample count.
func (s scrape) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	fam := s.families[name]
	if fam == nil {
		t.Fatalf("no metric %s in the scrape", name)
	}
next:
	for _, m := range fam.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch fam.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			return float64(m.GetHistogram().GetSampleCount())
		}
		t.Fatalf("%s: unexpected type %v", name, fam.GetType())
	}
	t.Fatalf("no series of %s with labels %v", name, labels)
	return 0
}

// client is a real neffos Go client connected to ns; it counts the "msg"
// events it receives and answers "question" Asks.
type client struct {
	*neffostest.Client
	got atomic.Int64
}

func dial(t *testing.T, n *node) *client {
	t.Helper()
	c := &client{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := neffostest.Dial(ctx, n.ws, neffos.Namespaces{ns: neffos.Events{
		"msg": func(*neffos.NSConn, neffos.Message) error { c.got.Add(1); return nil },
		"question": func(_ *neffos.NSConn, m neffos.Message) error {
			return neffos.Reply(append([]byte("answer:"), m.Body...))
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	c.Client = nc
	t.Cleanup(func() { c.Close() })
	if _, err := c.Connect(ctx, ns); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	return true
}

// TestMetricsMoveWithTraffic: two nodes on one broker, a real client on
// each; broadcasts from node A reach the client on node B, and a
// Server.Ask from A gets B's client's reply. The scraped numbers (over
// HTTP, parsed back) move accordingly on both nodes. With
// SCALEOUT_METRICS_DUMP set, node A's scrape is written there (CI checks
// it with promtool); when promtool is on PATH the test runs it too.
func TestMetricsMoveWithTraffic(t *testing.T) {
	mb := scaleout.NewMemoryBroker()
	a, b := startNode(t, mb, "a"), startNode(t, mb, "b")
	for _, n := range []*node{a, b} {
		if code, body := get(t, n.metrics+"/ready"); code != http.StatusOK || body != "ok\n" {
			t.Fatalf("/ready after UseStackExchange: %d %q, want 200 ok", code, body)
		}
	}
	ca, cb := dial(t, a), dial(t, b)
	beforeA, beforeB := scrapeOf(t, a), scrapeOf(t, b)

	const msgs = 50
	for i := range msgs {
		a.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: "msg", Body: fmt.Appendf(nil, "m%d", i)})
	}
	if !waitFor(10*time.Second, func() bool { return ca.got.Load() == msgs && cb.got.Load() == msgs }) {
		t.Fatalf("clients got %d (node a) and %d (node b) of %d broadcasts", ca.got.Load(), cb.got.Load(), msgs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := a.srv.Ask(ctx, neffos.Message{Namespace: ns, Event: "question", To: cb.ID, Body: []byte("x")})
	if err != nil || string(reply.Body) != "answer:x" {
		t.Fatalf("Ask across nodes = %q, %v", reply.Body, err)
	}
	// The broadcasts leave node A through its pipeline; wait until the
	// counters say all were published before reading them back.
	if !waitFor(10*time.Second, func() bool { return a.exc.Stats().Published >= msgs }) {
		t.Fatalf("node a published %d of %d", a.exc.Stats().Published, msgs)
	}
	afterA, afterB := scrapeOf(t, a), scrapeOf(t, b)

	grew := func(name string, before, after scrape, min float64, labels ...string) {
		t.Helper()
		d := after.value(t, name, labels...) - before.value(t, name, labels...)
		if d < min {
			t.Errorf("%s%v grew by %v, want at least %v", name, labels, d, min)
		}
	}
	grew("scaleout_published_total", beforeA, afterA, msgs+1) // the broadcasts and the Ask
	grew("scaleout_delivered_total", beforeA, afterA, msgs)   // to node A's own client
	grew("scaleout_received_total", beforeB, afterB, msgs)
	grew("scaleout_delivered_total", beforeB, afterB, msgs+1) // and the question
	grew("scaleout_publish_duration_seconds", beforeA, afterA, 1, "path", "batch")
	grew("scaleout_publish_batch_messages", beforeA, afterA, 1)
	grew("scaleout_publish_duration_seconds", beforeA, afterA, 1, "path", "direct")
	grew("scaleout_ask_duration_seconds", beforeA, afterA, 1)
	grew("scaleout_publish_duration_seconds", beforeB, afterB, 1, "path", "direct") // the reply
	if v := afterA.value(t, "scaleout_ask_errors_total"); v != 0 {
		t.Errorf("scaleout_ask_errors_total = %v, want 0", v)
	}
	for _, n := range []scrape{afterA, afterB} {
		if v := n.value(t, "scaleout_connections"); v != 1 {
			t.Errorf("scaleout_connections = %v, want 1", v)
		}
		if v := n.value(t, "scaleout_ready"); v != 1 {
			t.Errorf("scaleout_ready = %v, want 1", v)
		}
		if v := n.value(t, "scaleout_subscriptions"); v < 4 { // namespace, node, heartbeat, the client
			t.Errorf("scaleout_subscriptions = %v, want at least 4", v)
		}
	}
	if v := afterA.value(t, "scaleout_published_total", "node", "a"); v < msgs {
		t.Errorf("the node label: scaleout_published_total{node=\"a\"} = %v", v)
	}
	checkPromtool(t, afterA.raw)

	// The Ask histogram counts failures too, and the error counter moves.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if _, err := a.srv.Ask(ctx2, neffos.Message{Namespace: ns, Event: "question", To: "nobody"}); err == nil {
		t.Fatal("Ask To a client no node holds succeeded")
	}
	last := scrapeOf(t, a)
	grew("scaleout_ask_errors_total", afterA, last, 1)
	grew("scaleout_ask_duration_seconds", afterA, last, 1)
}

// checkPromtool writes the scrape where SCALEOUT_METRICS_DUMP says and runs
// promtool check metrics on it when promtool is installed (required in CI).
func checkPromtool(t *testing.T, raw []byte) {
	t.Helper()
	if dump := os.Getenv("SCALEOUT_METRICS_DUMP"); dump != "" {
		if err := os.WriteFile(dump, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not found (apt-get install prometheus)")
		}
		t.Log("promtool not found, check skipped (apt-get install prometheus)")
		return
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = bytes.NewReader(raw)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestReadyHandler: 503 with the reason before Init and after Close, 200
// in between, over HTTP.
func TestReadyHandler(t *testing.T) {
	exc := scaleout.New(scaleout.NewMemoryBroker().Broker(), "", scaleout.Options{})
	hs := httptest.NewServer(prometheus.ReadyHandler(exc))
	defer hs.Close()
	if code, body := get(t, hs.URL); code != http.StatusServiceUnavailable || !strings.Contains(body, "Init") {
		t.Fatalf("before Init: %d %q", code, body)
	}
	if err := exc.Init(neffos.Namespaces{ns: nil}); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, hs.URL); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("after Init: %d %q", code, body)
	}
	_ = exc.Close()
	if code, body := get(t, hs.URL); code != http.StatusServiceUnavailable || !strings.Contains(body, "closed") {
		t.Fatalf("after Close: %d %q", code, body)
	}
}
