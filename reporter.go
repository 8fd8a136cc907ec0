package scaleout

import (
	"log/slog"
	"sync/atomic"
)

// reportQueue bounds the errors waiting for Options.ErrorHandler and
// Options.Logger. An error that finds the queue full is counted
// (Stats.ReportsDropped) instead.
const reportQueue = 256

// reporter hands asynchronous errors to the user's ErrorHandler and Logger
// on a goroutine of its own, so user code never runs on an engine path or
// under an engine lock, and a slow handler only delays other reports.
type reporter struct {
	handler func(error)
	logger  *slog.Logger
	node    string
	ch      chan error
	dropped atomic.Uint64
}

func newReporter(handler func(error), logger *slog.Logger, node string) *reporter {
	return &reporter{handler: handler, logger: logger, node: node, ch: make(chan error, reportQueue)}
}

// report queues err without waiting.
func (r *reporter) report(err error) {
	if r.handler == nil && r.logger == nil {
		return
	}
	select {
	case r.ch <- err:
	default:
		r.dropped.Add(1)
	}
}

// run passes queued errors on until done is closed.
func (r *reporter) run(done <-chan struct{}) {
	consume(done, r.ch, func(err error) {
		if r.handler != nil {
			r.handler(err)
		}
		if r.logger != nil {
			r.logger.Warn("scaleout", "node", r.node, "err", err)
		}
	})
}

// consume calls fn with each value received from ch until done is closed.
func consume[T any](done <-chan struct{}, ch <-chan T, fn func(T)) {
	for {
		select {
		case <-done:
			return
		case v := <-ch:
			fn(v)
		}
	}
}
