package prometheus_test

import (
	"bufio"
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/prometheus"
)

// A node's /metrics and /ready. The in-process MemoryBroker stands in for
// Redis or NATS; with an adapter, pass the Observer in the adapter's
// scaleout.Options and the adapter's exchange to NewCollector and
// ReadyHandler.
func Example() {
	labels := prom.Labels{"node": "node1"}
	obs := prometheus.NewObserver(prometheus.Options{ConstLabels: labels})
	exc := scaleout.New(scaleout.NewMemoryBroker().Broker(), "", scaleout.Options{Observer: obs})
	defer exc.Close() // after server.Close: neffos v0.0.24 does not close exchanges

	reg := prom.NewRegistry()
	reg.MustRegister(obs, prometheus.NewCollector(exc, prometheus.Options{ConstLabels: labels}))
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	ready := prometheus.ReadyHandler(exc)
	// A real app serves them: mux.Handle("/metrics", metrics), mux.Handle("/ready", ready).
	probe := func() {
		rec := httptest.NewRecorder()
		ready.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
		fmt.Print(rec.Code, " ", rec.Body.String())
	}

	probe() // not ready: neffos has not called Init yet
	server := neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{"chat": neffos.Events{}})
	defer server.Close()
	if err := server.UseStackExchange(exc); err != nil {
		fmt.Println(err)
		return
	}
	probe()

	rec := httptest.NewRecorder()
	metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "scaleout_ready") || strings.HasPrefix(line, "scaleout_connections") {
			fmt.Println(line)
		}
	}
	// Output:
	// 503 scaleout: not ready: Init not called yet (Server.UseStackExchange calls it)
	// 200 ok
	// scaleout_connections{node="node1"} 0
	// scaleout_ready{node="node1"} 1
}
