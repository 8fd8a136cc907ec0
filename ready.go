package scaleout

import (
	"errors"
	"fmt"
)

// ErrNotReady is wrapped by the error of Exchange.Ready while the node
// should not get traffic. Test with errors.Is; during a broker outage the
// error wraps ErrBrokerUnavailable too, after Close ErrClosed.
var ErrNotReady = errors.New("scaleout: not ready")

// Ready reports whether this node can serve cross-node traffic, for a load
// balancer's health check or a Kubernetes readiness probe (the module's
// prometheus package serves it over HTTP). It returns nil once
//
//   - the engine started and Init ran (neffos calls it from
//     Server.UseStackExchange), so every namespace has its subscription;
//   - the broker confirmed those subscriptions (when it could not at Init,
//     the engine asks again every second, and Ready turns nil once it
//     did);
//   - and the broker is not known to be down: the last publishes made
//     progress. Every node publishes a heartbeat each second, so an idle
//     node learns of an outage within about Options.PublishTimeout plus a
//     second, and of the broker's return within about a second (its next
//     heartbeat). The broker restores its subscriptions when it
//     reconnects; Ready does not wait for that separately.
//
// Otherwise it returns an error wrapping ErrNotReady that says why. While
// not ready, the node still serves its own clients. Ready is cheap (atomic
// loads, no lock, no broker call): probe it as often as needed.
func (e *Exchange) Ready() error {
	switch {
	case e.isClosed():
		return fmt.Errorf("%w: %w", ErrNotReady, ErrClosed)
	case !e.inited.Load():
		return fmt.Errorf("%w: Init not called yet (Server.UseStackExchange calls it)", ErrNotReady)
	case !e.subs.confirmed.Load():
		return fmt.Errorf("%w: %w: namespace subscriptions not confirmed yet", ErrNotReady, ErrBrokerUnavailable)
	case e.down.Load():
		return fmt.Errorf("%w: %w: publishes made no progress for %v", ErrNotReady, ErrBrokerUnavailable, e.opts.PublishTimeout)
	}
	return nil
}
