package prometheus

import (
	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/neffos-contrib/scaleout"
)

// Observer is a scaleout.Observer that feeds latency histograms, and the
// prometheus.Collector that exports them. Set it as
// scaleout.Options.Observer of one exchange and register it:
//
//   - scaleout_publish_duration_seconds{path}: each broker publish call;
//     path "batch" for the publish pipeline (broadcasts, heartbeats, repair
//     answers), "direct" for messages To one client, Asks and replies.
//   - scaleout_publish_batch_messages: how many messages each pipeline
//     call carried.
//   - scaleout_publish_call_errors_total{path}: broker publish calls that
//     failed (each retry counts; scaleout_publish_errors_total counts the
//     messages given up on).
//   - scaleout_ask_duration_seconds: each Server.Ask, from call to return.
//   - scaleout_ask_errors_total: Asks that returned an error (timeout,
//     connection not found, an error reply).
//
// Its methods are safe for concurrent use and never block: an observation
// is a few atomic adds.
type Observer struct {
	publish    *prom.HistogramVec
	batchSize  prom.Histogram
	callErrors *prom.CounterVec
	ask        prom.Histogram
	askErrors  prom.Counter

	// curried once, so an observation does no label lookup
	pubBatch, pubDirect   prom.Observer
	failBatch, failDirect prom.Counter
}

var _ scaleout.Observer = (*Observer)(nil)

// NewObserver returns an Observer with opts' constant labels and buckets.
func NewObserver(opts Options) *Observer {
	buckets := opts.Buckets
	if len(buckets) == 0 {
		buckets = defaultBuckets
	}
	o := &Observer{
		publish: prom.NewHistogramVec(prom.HistogramOpts{
			Name:        "scaleout_publish_duration_seconds",
			Help:        "Duration of broker publish calls, by path (batch: the publish pipeline; direct: To, Ask, replies).",
			ConstLabels: opts.ConstLabels,
			Buckets:     buckets,
		}, []string{"path"}),
		batchSize: prom.NewHistogram(prom.HistogramOpts{
			Name:        "scaleout_publish_batch_messages",
			Help:        "Messages carried by each broker publish call of the publish pipeline.",
			ConstLabels: opts.ConstLabels,
			Buckets:     prom.ExponentialBuckets(1, 2, 9), // 1 to 256, the largest batch
		}),
		callErrors: prom.NewCounterVec(prom.CounterOpts{
			Name:        "scaleout_publish_call_errors_total",
			Help:        "Broker publish calls that failed, retries included, by path.",
			ConstLabels: opts.ConstLabels,
		}, []string{"path"}),
		ask: prom.NewHistogram(prom.HistogramOpts{
			Name:        "scaleout_ask_duration_seconds",
			Help:        "Duration of Server.Ask calls through the exchange, from call to return.",
			ConstLabels: opts.ConstLabels,
			Buckets:     buckets,
		}),
		askErrors: prom.NewCounter(prom.CounterOpts{
			Name:        "scaleout_ask_errors_total",
			Help:        "Server.Ask calls through the exchange that returned an error.",
			ConstLabels: opts.ConstLabels,
		}),
	}
	o.pubBatch, o.pubDirect = o.publish.WithLabelValues("batch"), o.publish.WithLabelValues("direct")
	o.failBatch, o.failDirect = o.callErrors.WithLabelValues("batch"), o.callErrors.WithLabelValues("direct")
	return o
}

// ObservePublish implements scaleout.Observer.
func (o *Observer) ObservePublish(s scaleout.PublishSample) {
	if s.Direct {
		o.pubDirect.Observe(s.Duration.Seconds())
		if s.Err != nil {
			o.failDirect.Inc()
		}
		return
	}
	o.pubBatch.Observe(s.Duration.Seconds())
	o.batchSize.Observe(float64(s.Messages))
	if s.Err != nil {
		o.failBatch.Inc()
	}
}

// ObserveAsk implements scaleout.Observer.
func (o *Observer) ObserveAsk(s scaleout.AskSample) {
	o.ask.Observe(s.Duration.Seconds())
	if s.Err != nil {
		o.askErrors.Inc()
	}
}

// Describe implements prometheus.Collector.
func (o *Observer) Describe(ch chan<- *prom.Desc) {
	o.publish.Describe(ch)
	o.batchSize.Describe(ch)
	o.callErrors.Describe(ch)
	o.ask.Describe(ch)
	o.askErrors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (o *Observer) Collect(ch chan<- prom.Metric) {
	o.publish.Collect(ch)
	o.batchSize.Collect(ch)
	o.callErrors.Collect(ch)
	o.ask.Collect(ch)
	o.askErrors.Collect(ch)
}
