package prometheus

import (
	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/neffos-contrib/scaleout"
)

// StatsSource is what a Collector reads: *scaleout.Exchange, and the
// exchanges of the stackexchange/redis and stackexchange/nats adapters.
type StatsSource interface {
	Stats() scaleout.Stats
}

// Readier is anything with a readiness check: *scaleout.Exchange (see
// scaleout.Exchange.Ready).
type Readier interface {
	Ready() error
}

// Options configures NewCollector and NewObserver. The zero value works.
type Options struct {
	// ConstLabels are added to every metric, for example
	// prometheus.Labels{"node": "node1"} when several nodes' exchanges
	// are registered in one registry. Keep their values few and fixed:
	// each distinct set is a new series of every metric. Default none.
	ConstLabels prom.Labels
	// Buckets are the upper bounds, in seconds, of the publish and Ask
	// latency histograms (NewObserver). Default: 0.1 ms to 10 s, in 16
	// steps (0.0001, 0.00025, 0.0005, 0.001, ..., 5, 10).
	Buckets []float64
}

var defaultBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Collector is a prometheus.Collector of an exchange's Stats: it calls
// Stats once per scrape and reports the counters of scaleout.Stats as
// counters and its now-values as gauges, plus scaleout_ready (1 when
// Ready returns nil, else 0) when the source has a Ready method. Register
// one per exchange, with ConstLabels that tell them apart when there are
// several in one registry.
//
// A Collector holds no state besides its descriptions; it is safe for
// concurrent scrapes. A scrape costs one Stats call (atomic loads, no
// lock), one Ready call, and about 25 series.
type Collector struct {
	src   StatsSource
	ready Readier // nil when src has no Ready
	stats []stat
	up    *prom.Desc
}

// stat is one field of scaleout.Stats as a metric.
type stat struct {
	desc  *prom.Desc
	typ   prom.ValueType
	value func(*scaleout.Stats) float64
}

// NewCollector returns a Collector of src's Stats.
func NewCollector(src StatsSource, opts Options) *Collector {
	c := &Collector{src: src}
	c.ready, _ = src.(Readier)
	counter := func(name, help string, v func(*scaleout.Stats) uint64) {
		c.stats = append(c.stats, stat{
			desc:  prom.NewDesc("scaleout_"+name+"_total", help, nil, opts.ConstLabels),
			typ:   prom.CounterValue,
			value: func(s *scaleout.Stats) float64 { return float64(v(s)) },
		})
	}
	gauge := func(name, help string, v func(*scaleout.Stats) int) {
		c.stats = append(c.stats, stat{
			desc:  prom.NewDesc("scaleout_"+name, help, nil, opts.ConstLabels),
			typ:   prom.GaugeValue,
			value: func(s *scaleout.Stats) float64 { return float64(v(s)) },
		})
	}
	counter("published", "Envelopes published to the broker.", func(s *scaleout.Stats) uint64 { return s.Published })
	counter("publish_errors", "Publishes that failed or timed out, given up on.", func(s *scaleout.Stats) uint64 { return s.PublishErrors })
	counter("received", "Envelopes read from the broker, own echoes included.", func(s *scaleout.Stats) uint64 { return s.Received })
	counter("delivered", "Messages written to local websocket connections.", func(s *scaleout.Stats) uint64 { return s.Delivered })
	counter("dropped", "Messages dropped because a connection's queue was full (slow consumer).", func(s *scaleout.Stats) uint64 { return s.Dropped })
	counter("decode_errors", "Payloads read from the broker that were not valid envelopes.", func(s *scaleout.Stats) uint64 { return s.DecodeErrors })
	counter("duplicates", "Envelopes read from the broker a second time, dropped.", func(s *scaleout.Stats) uint64 { return s.Duplicates })
	counter("missed", "Messages from other nodes that never arrived, neither late nor by repair.", func(s *scaleout.Stats) uint64 { return s.Missed })
	counter("repaired", "Messages from other nodes received by repair after a gap.", func(s *scaleout.Stats) uint64 { return s.Repaired })
	counter("resent", "Messages sent again from the retransmit buffer at other nodes' request.", func(s *scaleout.Stats) uint64 { return s.Resent })
	counter("reports_dropped", "Errors not passed to the ErrorHandler and Logger because 256 were waiting.", func(s *scaleout.Stats) uint64 { return s.ReportsDropped })
	gauge("connections", "Local websocket connections tracked now.", func(s *scaleout.Stats) int { return s.Conns })
	gauge("queued_messages", "Messages waiting in connection queues now.", func(s *scaleout.Stats) int { return s.Queued })
	gauge("outbound_messages", "Messages waiting in the node's publish pipeline now.", func(s *scaleout.Stats) int { return s.Outbound })
	gauge("subscriptions", "Broker channels this node is subscribed to now.", func(s *scaleout.Stats) int { return s.Subscriptions })
	gauge("pending_asks", "Server.Ask calls waiting for a reply now.", func(s *scaleout.Stats) int { return s.PendingAsks })
	gauge("held_messages", "Messages from other nodes held now behind a missing earlier one.", func(s *scaleout.Stats) int { return s.Held })
	gauge("retained_messages", "Messages in the retransmit buffer now.", func(s *scaleout.Stats) int { return s.Retained })
	gauge("retained_bytes", "Bytes in the retransmit buffer now.", func(s *scaleout.Stats) int { return s.RetainedBytes })
	if c.ready != nil {
		c.up = prom.NewDesc("scaleout_ready", "1 when the exchange is ready (Init done, subscriptions confirmed, broker not down), else 0.", nil, opts.ConstLabels)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prom.Desc) {
	for _, s := range c.stats {
		ch <- s.desc
	}
	if c.up != nil {
		ch <- c.up
	}
}

// Collect implements prometheus.Collector: one Stats call.
func (c *Collector) Collect(ch chan<- prom.Metric) {
	st := c.src.Stats()
	for _, s := range c.stats {
		ch <- prom.MustNewConstMetric(s.desc, s.typ, s.value(&st))
	}
	if c.up != nil {
		v := 0.0
		if c.ready.Ready() == nil {
			v = 1
		}
		ch <- prom.MustNewConstMetric(c.up, prom.GaugeValue, v)
	}
}
