package redis

import "context"

// SubscribeChunk is how many channels one SUBSCRIBE command carries.
const SubscribeChunk = subscribeChunk

// ParseSlots parses a CLUSTER SLOTS reply.
var ParseSlots = parseSlots

// GoRedisLog is what go-redis's process-wide logger is set to.
func GoRedisLog(ctx context.Context, format string, v ...interface{}) {
	logSink{}.Printf(ctx, format, v...)
}
