package scaleout

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Sequencing. Every envelope a node publishes carries a stream and a
// sequence number: one stream per channel the node publishes on, numbered
// 1, 2, 3, ... in publish order. A restarted node has a new node id, so its
// streams are new ones. A receiving node keeps, per channel and origin, the
// highest number it has seen and the ranges it has not seen below it:
//
//   - a number it has seen is a duplicate (a publish retried after its
//     first attempt got through, or the same message from a second broker):
//     dropped and counted (Stats.Duplicates);
//   - a number above the highest opens a gap; a gap that is not filled within
//     gapWait (a second broker, or a retry, may still bring it) is counted
//     (Stats.Missed) and reported once, with the origin, channel and range;
//   - the first number seen on a stream is where the receiver starts: what
//     came before it may not have been for this node, so a lower number
//     that arrives later (publishes of one origin may overtake each other
//     when several goroutines publish at once) is delivered, and never
//     counted missed.
//
// A node forgets a channel's receive state when it unsubscribes the
// channel, and a stream idle for streamIdle.

const (
	gapWait    = 10 * time.Second
	streamIdle = 10 * time.Minute
	// maxGaps bounds the open gaps kept per stream; an older gap beyond it
	// is counted missed at once.
	maxGaps = 64
)

// senders numbers this node's publishes, per channel.
type senders struct {
	next atomic.Uint64 // stream ids

	mu      sync.Mutex
	streams map[string]*sendStream
}

type sendStream struct {
	id   uint64
	seq  uint64
	used time.Time
}

func newSenders() *senders { return &senders{streams: make(map[string]*sendStream)} }

// stamp gives env the next number of channel's stream. Called in publish
// order: numbers go out in the order they were given.
func (s *senders) stamp(channel string, env *envelope, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[channel]
	if st == nil {
		st = &sendStream{id: s.next.Add(1)}
		s.streams[channel] = st
	}
	st.seq++
	st.used = now
	env.stream, env.seq = st.id, st.seq
}

// sweep forgets streams idle since before cutoff (a channel used again
// later starts a new stream, which receivers take as a fresh start).
func (s *senders) sweep(cutoff time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch, st := range s.streams {
		if st.used.Before(cutoff) {
			delete(s.streams, ch)
		}
	}
}

// receivers tracks what this node has seen of other nodes' streams.
type receivers struct {
	mu       sync.Mutex
	channels map[string]map[string]*recvStream // channel -> origin -> stream

	duplicates, missed atomic.Uint64
}

type recvStream struct {
	id   uint64
	high uint64
	gaps []gap // ascending, disjoint, all below high
	seen time.Time
}

// gap is a range of numbers not seen yet, [from, to]. A silent gap is the
// range below a stream's first number: it is not counted when it expires.
type gap struct {
	from, to uint64
	since    time.Time
	silent   bool
}

// missed describes numbers of a stream given up on: they never arrived.
type missed struct {
	origin, channel string
	from, to        uint64
}

func (m missed) Error() string {
	return fmt.Sprintf("%d messages from node %s on %s (numbers %d to %d)", m.to-m.from+1, m.origin, m.channel, m.from, m.to)
}

func newReceivers() *receivers {
	return &receivers{channels: make(map[string]map[string]*recvStream)}
}

// accept reports whether env, read on channel, is new (deliver it) or a
// duplicate (drop it). Unsequenced envelopes are always new. Gaps given up
// on at once (more than maxGaps open) are returned for reporting.
func (r *receivers) accept(channel string, env *envelope, now time.Time) (fresh bool, lost []missed) {
	if env.stream == 0 || env.seq == 0 {
		return true, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	byOrigin := r.channels[channel]
	if byOrigin == nil {
		byOrigin = make(map[string]*recvStream)
		r.channels[channel] = byOrigin
	}
	st := byOrigin[env.origin]
	if st == nil || st.id != env.stream {
		st = &recvStream{id: env.stream, high: env.seq, seen: now}
		if env.seq > 1 {
			st.gaps = []gap{{from: 1, to: env.seq - 1, since: now, silent: true}}
		}
		byOrigin[env.origin] = st
		return true, nil
	}
	st.seen = now
	seq := env.seq
	if seq > st.high {
		if seq > st.high+1 {
			st.gaps = append(st.gaps, gap{from: st.high + 1, to: seq - 1, since: now})
			for len(st.gaps) > maxGaps {
				g := st.gaps[0]
				st.gaps = st.gaps[1:]
				if !g.silent {
					lost = append(lost, r.lose(env.origin, channel, g))
				}
			}
		}
		st.high = seq
		return true, lost
	}
	for i, g := range st.gaps {
		if seq < g.from || seq > g.to {
			continue
		}
		// A late arrival fills part of a gap.
		switch {
		case g.from == g.to:
			st.gaps = append(st.gaps[:i], st.gaps[i+1:]...)
		case seq == g.from:
			st.gaps[i].from++
		case seq == g.to:
			st.gaps[i].to--
		default:
			st.gaps = append(st.gaps[:i+1], st.gaps[i:]...)
			st.gaps[i].to = seq - 1
			st.gaps[i+1].from = seq + 1
		}
		return true, nil
	}
	r.duplicates.Add(1)
	return false, nil
}

func (r *receivers) lose(origin, channel string, g gap) missed {
	r.missed.Add(g.to - g.from + 1)
	return missed{origin: origin, channel: channel, from: g.from, to: g.to}
}

// sweep gives up on gaps open since before now-gapWait and forgets streams
// idle for streamIdle. It returns the gaps given up on.
func (r *receivers) sweep(now time.Time) (lost []missed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for channel, byOrigin := range r.channels {
		for origin, st := range byOrigin {
			keep := st.gaps[:0]
			for _, g := range st.gaps {
				switch {
				case now.Sub(g.since) < gapWait:
					keep = append(keep, g)
				case !g.silent:
					lost = append(lost, r.lose(origin, channel, g))
				}
			}
			st.gaps = keep
			if len(st.gaps) == 0 && now.Sub(st.seen) >= streamIdle {
				delete(byOrigin, origin)
			}
		}
		if len(byOrigin) == 0 {
			delete(r.channels, channel)
		}
	}
	return lost
}

// forget drops the receive state of channels this node no longer
// subscribes: what is published there meanwhile is not for this node, and
// must not look like a gap when it subscribes again.
func (r *receivers) forget(channels ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ch := range channels {
		delete(r.channels, ch)
	}
}
