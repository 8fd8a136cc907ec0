// Package testkit holds the helpers every test harness of this module
// shares (the conformance suite's and the adapters' own tests): polling
// with a deadline, a watchdog for hung tests, and names unique to a test.
package testkit

import (
	"fmt"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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
