// Package testkit holds the helpers every test harness of this module
// shares (the conformance suite's and the adapters' own tests): polling
// with a deadline, a watchdog for hung tests, and names unique to a test.
package testkit

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Until polls cond until it holds or d passes, and reports whether it
// held. Polling is for conditions nothing signals (a broker server's
// counts, goroutine counts); it is not synchronisation.
func Until(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond) // polling interval
	}
}

// Watchdog fails a hung test instead of letting it hang the run: when d
// passes before t ends it panics with msg and every goroutine's stack.
func Watchdog(t testing.TB, d time.Duration, msg string) {
	timer := PanicAfter(d, msg)
	t.Cleanup(func() { timer.Stop() })
}

// PanicAfter panics with msg and every goroutine's stack after d, unless
// the returned timer is stopped first.
func PanicAfter(d time.Duration, msg string) *time.Timer {
	return time.AfterFunc(d, func() {
		debug.SetTraceback("all")
		panic(msg)
	})
}

var seq atomic.Int64

// Name returns a channel prefix that no other test of this run uses, so
// that tests share one broker server: tag, the end of t's name (bytes
// outside [A-Za-z0-9] replaced by '-') and a sequence number.
func Name(t testing.TB, tag string) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, t.Name())
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	return fmt.Sprintf("%s%d-%d-%s", tag, time.Now().UnixNano()%1e9, seq.Add(1), name)
}

// NeffosServerLoop is the goroutine neffos v0.0.24's server leaves running
// after Close (v0.0.25's stops): every leak check ignores it.
var NeffosServerLoop = goleak.IgnoreTopFunction("github.com/kataras/neffos.(*Server).start")

// LeakCheck is the end of a TestMain: when code (m.Run's) is 0 and
// goroutines other than those opts ignore (and NeffosServerLoop) are still
// running after grace, it prints them and returns 1; otherwise code.
// Goroutines that end a moment after Close (go-redis's pool retries a
// dial once a second) are what grace is for.
func LeakCheck(code int, grace time.Duration, opts ...goleak.Option) int {
	if code != 0 {
		return code
	}
	opts = append(opts, NeffosServerLoop)
	var err error
	for deadline := time.Now().Add(grace); ; time.Sleep(100 * time.Millisecond) {
		if err = goleak.Find(opts...); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "goroutine leak:", err)
		return 1
	}
	return 0
}
