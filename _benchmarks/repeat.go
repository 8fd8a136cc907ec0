package main

import (
	"fmt"
	"slices"
)

// Repeats. Every configuration (an exchange at a client count, or a
// connect storm) runs cfg.repeat times, interleaved across the exchanges
// (none-sync, none-async, redis-builtin, ..., then again), each time on a
// fresh cluster and a fresh broker, so that a slow phase of this shared
// machine hits every exchange alike. The report gives the median of the
// repeats with their spread (min-max), and ratios from medians against a
// reference: the faster of the exchange-less nodes that lost nothing.

// interleave calls f for every exchange once per round, rounds times, in
// the order round 1: exchanges..., round 2: exchanges..., and so on.
func interleave(rounds int, exchanges []string, f func(round int, ex string)) {
	for round := 1; round <= rounds; round++ {
		for _, ex := range exchanges {
			f(round, ex)
		}
	}
}

// Spread is a number over the repeats: the median and the range.
type Spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"` // repeats that gave a value
}

func spreadOf(v []float64) Spread {
	if len(v) == 0 {
		return Spread{}
	}
	return Spread{Median: median(v), Min: slices.Min(v), Max: slices.Max(v), N: len(v)}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// format prints the median and, over several repeats, the range:
// "1234 (1100-1400)".
func (s Spread) format(f func(float64) string) string {
	if s.N == 0 {
		return "-"
	}
	if s.N == 1 || s.Min == s.Max {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s-%s)", f(s.Median), f(s.Min), f(s.Max))
}

// The references: one node, no exchange. none-sync sets
// Server.SyncBroadcaster; none-async keeps neffos's default broadcaster
// (which lost most of a burst on neffos v0.0.24).
var references = []string{"none-sync", "none-async"}

func isReference(ex string) bool { return slices.Contains(references, ex) }

// refCandidate is a reference exchange at one client count.
type refCandidate struct {
	exchange string
	lossless bool    // nothing missing, duplicated, wrong or out of order, no error, in any repeat
	speed    float64 // median of the number that decides (deliveries/s, connects/s)
}

// pickReference returns the fastest lossless candidate, or "" when none
// lost nothing.
func pickReference(cands []refCandidate) string {
	best, speed := "", 0.0
	for _, c := range cands {
		if c.lossless && c.speed > 0 && (best == "" || c.speed > speed) {
			best, speed = c.exchange, c.speed
		}
	}
	return best
}
