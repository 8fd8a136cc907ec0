package redis

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	goredis "github.com/go-redis/redis/v8"

	"github.com/neffos-contrib/scaleout"
)

// ErrGoRedisLog wraps a line that go-redis logged (through its
// process-wide logger) and that the exchange passes to Options.ErrorHandler
// and Options.Logger instead of letting it reach stderr, such as "redis:
// discarding bad PubSub connection: EOF" while Redis restarts. Those lines
// are about connections, so it wraps scaleout.ErrBrokerUnavailable.
var ErrGoRedisLog = fmt.Errorf("scaleout/redis: go-redis: %w", scaleout.ErrBrokerUnavailable)

// go-redis v8 has one logger for the whole process (goredis.SetLogger),
// which writes to stderr by default. Importing this package replaces it,
// once, with logSink, which routes each line by the context go-redis logged
// it with:
//
//   - a line logged on behalf of an exchange (every call an exchange makes
//     carries a context marking it) goes to that exchange's ErrorHandler and
//     Logger, wrapped in ErrGoRedisLog, and nowhere else; it is dropped when
//     the exchange sets neither, or is not running;
//   - any other line (the application's own go-redis clients, or go-redis
//     goroutines that log without a caller's context) goes to every running
//     exchange's ErrorHandler and Logger; while no exchange runs it is
//     written to stderr as go-redis would.
//
// An application that calls goredis.SetLogger itself replaces logSink, and
// then receives every line, the exchanges' included.

func init() { goredis.SetLogger(logSink{}) }

// logKey marks a context as one an exchange's broker passes to go-redis.
type logKey struct{}

// tagged returns ctx marked as b's.
func tagged(ctx context.Context, b *broker) context.Context {
	return context.WithValue(ctx, logKey{}, b)
}

// sinks are the running brokers' report functions.
var sinks struct {
	sync.Mutex
	m map[*broker]func(error)
}

func addSink(b *broker, report func(error)) {
	sinks.Lock()
	if sinks.m == nil {
		sinks.m = make(map[*broker]func(error))
	}
	sinks.m[b] = report
	sinks.Unlock()
}

func removeSink(b *broker) {
	sinks.Lock()
	delete(sinks.m, b)
	sinks.Unlock()
}

type logSink struct{}

// Printf implements go-redis's internal.Logging. The report functions only
// queue (the engine's reporter never blocks), so Printf never waits on a
// user's handler.
func (logSink) Printf(ctx context.Context, format string, v ...interface{}) {
	line := fmt.Sprintf(format, v...)
	var owner *broker
	if ctx != nil {
		owner, _ = ctx.Value(logKey{}).(*broker)
	}
	sinks.Lock()
	var reports []func(error)
	if owner != nil {
		if r, ok := sinks.m[owner]; ok {
			reports = append(reports, r)
		}
	} else {
		for _, r := range sinks.m {
			reports = append(reports, r)
		}
	}
	sinks.Unlock()
	if owner == nil && len(reports) == 0 {
		fmt.Fprintf(os.Stderr, "redis: %s %s\n", time.Now().Format("2006/01/02 15:04:05"), line)
		return
	}
	err := fmt.Errorf("%w: %s", ErrGoRedisLog, line)
	for _, r := range reports {
		r(err)
	}
}
