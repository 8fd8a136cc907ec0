// Package prometheus exports the numbers of a scaleout exchange to
// Prometheus (github.com/prometheus/client_golang) and serves its readiness
// over HTTP, for load balancers and Kubernetes probes. It is a module of
// its own, so the scaleout module itself never depends on client_golang.
//
// # Metrics
//
// A Collector reads an exchange's Stats at each scrape: every counter of
// scaleout.Stats as a Prometheus counter (scaleout_published_total, ...),
// every now-value as a gauge (scaleout_connections, ...), and, when the
// exchange has a Ready method, scaleout_ready (1 or 0). An Observer, set
// as scaleout.Options.Observer, feeds histograms of broker publish latency
// (scaleout_publish_duration_seconds, by path: "batch" for the publish
// pipeline, "direct" for messages To one client, Asks and replies), of the
// pipeline's batch sizes and of Server.Ask latency.
//
// Label cardinality is bounded: the only labels are path (two values) and
// the constant labels of Options (a node name, for example). Nothing is
// labelled by connection, room or namespace.
//
// # Use
//
//	obs := prometheus.NewObserver(prometheus.Options{})
//	exc := scaleout.New(broker, "", scaleout.Options{Observer: obs})
//	reg := prom.NewRegistry()
//	reg.MustRegister(obs, prometheus.NewCollector(exc, prometheus.Options{}))
//	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//	mux.Handle("/ready", prometheus.ReadyHandler(exc))
//
// Here prom is github.com/prometheus/client_golang/prometheus and promhttp
// its promhttp package. The adapters' exchanges (stackexchange/redis,
// stackexchange/nats) have Stats too, so a Collector takes them as they
// are.
//
// # Cost
//
// A scrape costs one Stats call (atomic loads, no lock) and the encoding
// of about 25 series plus the histograms' buckets. An observation costs a
// histogram update (atomic adds); nothing here takes a lock on the
// exchange's paths.
package prometheus
