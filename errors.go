package scaleout

import "errors"

// Sentinel errors. Every error this module returns or reports (the root
// package and the adapters under stackexchange/) wraps one of them, so
// callers test with errors.Is. Two kinds of error are handed back as they
// are instead: the context's (Ask returns ctx.Err() when ctx is done
// first) and the client's (Ask returns the Message.Err of the reply, as
// neffos does). An adapter may define sentinels of its own for finer
// tests (nats.ErrPayloadTooLarge); each of those wraps one of these.
var (
	// ErrClosed is returned by calls on an Exchange after Close.
	ErrClosed = errors.New("scaleout: closed")
	// ErrPublish wraps a broker failure to publish (timeout, connection
	// refused, broker down). neffos's Publish can only return false; the
	// cause reaches Options.ErrorHandler wrapped in ErrPublish.
	ErrPublish = errors.New("scaleout: publish failed")
	// ErrSubscribe wraps a broker failure to subscribe or unsubscribe a
	// channel. The broker keeps the channel and subscribes it again when its
	// connection comes back.
	ErrSubscribe = errors.New("scaleout: subscribe failed")
	// ErrConnNotFound is returned by Ask when Message.To names a connection
	// that no node holds, as far as the broker can tell. Ask returns it at
	// once instead of waiting for the context's deadline.
	ErrConnNotFound = errors.New("scaleout: connection not found on any node")
	// ErrMalformed wraps a payload read from the broker that is not a valid
	// envelope (garbage, truncated, wrong version). Such payloads are
	// dropped and counted in Stats.DecodeErrors. NotifyAsk also returns it
	// for a reply whose wait token no Ask of this module issued, so that
	// neffos offers the reply to its other exchange.
	ErrMalformed = errors.New("scaleout: malformed envelope")
	// ErrSlowConsumer is reported when a connection's outbound queue is full
	// and a message for it is dropped. It is reported once per episode: the
	// next report for the same connection comes after its queue drained.
	ErrSlowConsumer = errors.New("scaleout: connection queue full, message dropped")
	// ErrBrokerUnavailable wraps the failure to reach a broker: when an
	// exchange is constructed (returned), and when an established broker
	// connection is lost (reported to Options.ErrorHandler).
	ErrBrokerUnavailable = errors.New("scaleout: broker unavailable")
	// ErrRejected is wrapped by a Broker's publish error when the broker
	// server refused that message and a retry cannot help (a payload over
	// its size limit, a channel the credentials may not publish to). Other
	// publish errors are retried until Options.PublishTimeout.
	ErrRejected = errors.New("scaleout: rejected by the broker")
	// ErrMissed is reported when messages from another node never arrived:
	// a gap in that node's sequence numbers that no retry or second broker
	// filled within ten seconds. The report names the origin node, the
	// channel and the range; Stats.Missed counts the messages.
	ErrMissed = errors.New("scaleout: messages missed")
	// ErrInvalidConfig wraps a constructor's refusal of its arguments (a nil
	// or unsupported client, a Sentinel master name without sentinels, a
	// nats.Option that failed), and the error Init returns when a setting
	// read once at the exchange's first use (the nats adapter's
	// SubjectPrefix) was changed after it.
	ErrInvalidConfig = errors.New("scaleout: invalid configuration")
)
