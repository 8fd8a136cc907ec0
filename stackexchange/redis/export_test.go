package redis

import (
	"context"

	"github.com/neffos-contrib/scaleout"
)

// SubscribeChunk is how many channels one SUBSCRIBE command carries.
const SubscribeChunk = subscribeChunk

// ParseSlots parses a CLUSTER SLOTS reply.
var ParseSlots = parseSlots

// GoRedisLog is what go-redis's process-wide logger is set to.
func GoRedisLog(ctx context.Context, format string, v ...interface{}) {
	logSink{}.Printf(ctx, format, v...)
}

// Engine returns the engine of s, for this package's tests: ChannelOf and
// NodeID name the channels a test publishes garbage on or counts.
func Engine(s *StackExchange) *scaleout.Exchange { return s.eng }
