package scaleout

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Sequencing and repair, the receiving side. Every envelope a node
// publishes carries a stream and a sequence number (history numbers them:
// one stream per channel, 1, 2, 3, ... in publish order; a restarted node
// has a new node id, so its streams are new ones). A receiving node keeps,
// per channel and origin, the highest number it has seen and the ranges it
// has not seen below it (gaps):
//
//   - a number it has seen is a duplicate (a publish retried after its
//     first attempt got through, the same message from a second broker, a
//     repair that crossed a late copy): dropped and counted
//     (Stats.Duplicates);
//   - a number above the highest opens a gap. Messages above a gap are held,
//     not delivered, so each origin's messages reach clients in its order.
//     After repairDelay without the missing numbers (a late copy, a second
//     broker, may still bring them) the node asks the origin for them on the
//     origin's node channel (at most repairMax numbers per request, again
//     every repairRetry); the origin sends them from its retransmit buffer,
//     or answers that they are void (nothing to deliver: an Ask, a message
//     re-routed) or gone (no longer buffered). A gap not filled within
//     gapWait, and numbers answered gone, are counted (Stats.Missed) and
//     reported once, with the origin, channel and range; then the held
//     messages are delivered;
//   - heartbeats: every node announces the last number of its streams once
//     per beatInterval, so a gap is found even when the origin publishes
//     nothing after an outage;
//   - the first number seen on a stream (or announced by a heartbeat) is
//     where the receiver starts when the stream began before the receiver
//     read its channel (envelopes and heartbeats carry the stream's age; a
//     receiver compares it with how long it has read the channel, allowing
//     ageSlack for the time in transit): what came before it may not have
//     been for this node, so a lower number that arrives later is delivered
//     at once, and never counted missed (a silent gap). When the stream
//     began after the receiver started reading, the numbers below are a
//     gap like any other: a message To a client whose first numbers all
//     fell in an outage is repaired too.
//
// Bounds: held messages, all streams together, heldCount messages and
// heldBytes bytes; past either, the stream's lowest gap is given up
// (counted missed) and what it held is delivered. maxGaps open gaps per
// stream. A node forgets a channel's receive state when it unsubscribes the
// channel, and a stream idle for streamIdle.

const (
	gapWait      = 10 * time.Second
	streamIdle   = 10 * time.Minute
	repairDelay  = 200 * time.Millisecond
	repairRetry  = time.Second
	repairMax    = 1024
	beatInterval = time.Second
	// maxGaps bounds the open gaps kept per stream; an older gap beyond it
	// is counted missed at once.
	maxGaps   = 64
	heldCount = 65536
	heldBytes = 64 << 20
	ageSlack  = time.Second
)

// receivers tracks what this node has seen of other nodes' streams.
type receivers struct {
	mu       sync.Mutex
	channels map[string]map[string]*recvStream // channel -> origin -> stream
	since    map[string]time.Time              // channel -> read since (listen)
	gapped   map[*recvStream]struct{}          // streams with open, non-silent gaps
	heldN    int
	heldB    int

	duplicates, missed, repaired atomic.Uint64
	held                         atomic.Int64
}

type recvStream struct {
	origin, channel string
	id              uint64
	high            uint64
	gaps            []gap      // ascending, disjoint, all below high
	held            []envelope // ascending numbers, each above a non-silent gap
	seen            time.Time
}

// gap is a range of numbers not seen yet, [from, to]. A silent gap is the
// range below a stream's first number: it is not counted when it expires.
type gap struct {
	from, to     uint64
	since, asked time.Time
	silent       bool
}

// missed describes numbers of a stream given up on: they never arrived.
type missed struct {
	origin, channel string
	from, to        uint64
}

func (m missed) Error() string {
	return fmt.Sprintf("%d messages from node %s on %s (numbers %d to %d)", m.to-m.from+1, m.origin, m.channel, m.from, m.to)
}

// repairRequest asks origin for numbers from..to of its stream on channel.
type repairRequest struct {
	origin, channel string
	stream          uint64
	from, to        uint64
}

func newReceivers() *receivers {
	return &receivers{channels: make(map[string]map[string]*recvStream), since: make(map[string]time.Time), gapped: make(map[*recvStream]struct{})}
}

// listen notes that this node subscribes channel: heartbeats about it are
// taken from now on.
func (r *receivers) listen(channels ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, ch := range channels {
		if r.channels[ch] == nil {
			r.channels[ch] = make(map[string]*recvStream)
			r.since[ch] = now
		}
	}
}

// listening reports whether this node reads channel.
func (r *receivers) listening(channel string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.since[channel]
	return ok
}

// accept takes env, read on channel, and returns what to deliver now, in
// order: env itself when it is new and nothing from its origin is missing
// below it, then the held messages that no longer wait for anything.
// Duplicates are dropped. Unsequenced envelopes are always delivered. With
// known, env counts only on a stream this node already tracks (a repair).
// fresh reports whether env was new; lost lists the gaps given up on.
func (r *receivers) accept(channel string, env *envelope, now time.Time, known bool) (out []envelope, lost []missed, fresh bool) {
	if env.stream == 0 || env.seq == 0 {
		return []envelope{*env}, nil, true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	byOrigin := r.channels[channel]
	if byOrigin == nil {
		if known {
			return nil, nil, false
		}
		byOrigin = make(map[string]*recvStream)
		r.channels[channel] = byOrigin
	}
	st := byOrigin[env.origin]
	if st == nil || st.id != env.stream {
		if known {
			return nil, nil, false
		}
		out, lost = r.restart(byOrigin, st, channel, env.origin, env.stream, env.seq-1, env.age, now)
		st = byOrigin[env.origin]
		st.high = env.seq
		out = r.place(st, env, out)
		out, lost = r.settle(st, out, lost)
		return out, lost, true
	}
	st.seen = now
	seq := env.seq
	if seq == st.high+1 && len(st.gaps) == 0 {
		// The common case: the next number, nothing missing or held.
		st.high = seq
		return []envelope{*env}, nil, true
	}
	if seq > st.high {
		if seq > st.high+1 {
			st.gaps = append(st.gaps, gap{from: st.high + 1, to: seq - 1, since: now})
			lost = r.trim(st, lost)
		}
		st.high = seq
		out = r.place(st, env, out)
		out, lost = r.settle(st, out, lost)
		return out, lost, true
	}
	for i, g := range st.gaps {
		if seq < g.from || seq > g.to {
			continue
		}
		// A late arrival, or a repair, fills part of a gap.
		switch {
		case g.from == g.to:
			st.gaps = slices.Delete(st.gaps, i, i+1)
		case seq == g.from:
			st.gaps[i].from++
		case seq == g.to:
			st.gaps[i].to--
		default:
			st.gaps = slices.Insert(st.gaps, i+1, g)
			st.gaps[i].to = seq - 1
			st.gaps[i+1].from = seq + 1
		}
		if g.silent {
			out = append(out, *env) // below the first contact: at once
		} else {
			out = r.place(st, env, out)
		}
		out, lost = r.settle(st, out, lost)
		return out, lost, true
	}
	r.duplicates.Add(1)
	return nil, nil, false
}

// restart replaces old (nil, or an earlier stream of the origin) with a new
// stream, of age ms, whose numbers up to seen were not seen here: a silent
// gap when the stream began before this node read the channel, a gap to
// repair otherwise. What old held is delivered; its gaps are given up.
func (r *receivers) restart(byOrigin map[string]*recvStream, old *recvStream, channel, origin string, stream, seen, age uint64, now time.Time) (out []envelope, lost []missed) {
	if old != nil {
		out, lost = r.drop(old, out, lost)
	}
	st := &recvStream{origin: origin, channel: channel, id: stream, high: seen, seen: now}
	if seen > 0 {
		since, ok := r.since[channel]
		silent := !ok || age == 0 || now.Sub(since) <= time.Duration(age)*time.Millisecond+ageSlack
		st.gaps = []gap{{from: 1, to: seen, since: now, silent: silent}}
	}
	byOrigin[origin] = st
	return out, lost
}

// drop gives up every gap of st and releases what it held.
func (r *receivers) drop(st *recvStream, out []envelope, lost []missed) ([]envelope, []missed) {
	for _, g := range st.gaps {
		if !g.silent {
			lost = append(lost, r.lose(st, g.from, g.to))
		}
	}
	st.gaps = nil
	out = r.release(st, out)
	delete(r.gapped, st)
	return out, lost
}

// blocked reports whether a non-silent gap lies below seq.
func (st *recvStream) blocked(seq uint64) bool {
	for _, g := range st.gaps {
		if !g.silent {
			return g.from < seq
		}
	}
	return false
}

// place delivers env or, when a gap lies below it, holds it.
func (r *receivers) place(st *recvStream, env *envelope, out []envelope) []envelope {
	if !st.blocked(env.seq) {
		return append(out, *env)
	}
	i, _ := slices.BinarySearchFunc(st.held, env.seq, func(e envelope, seq uint64) int {
		switch {
		case e.seq < seq:
			return -1
		case e.seq > seq:
			return 1
		}
		return 0
	})
	st.held = slices.Insert(st.held, i, *env)
	r.heldN++
	r.heldB += env.size()
	r.held.Add(1)
	return out
}

// release appends the held messages of st that no longer wait for a gap.
func (r *receivers) release(st *recvStream, out []envelope) []envelope {
	n := 0
	for n < len(st.held) && !st.blocked(st.held[n].seq) {
		out = append(out, st.held[n])
		r.heldN--
		r.heldB -= st.held[n].size()
		n++
	}
	if n > 0 {
		r.held.Add(-int64(n))
		st.held = slices.Delete(st.held, 0, n)
	}
	return out
}

// settle releases what st may deliver, gives up its lowest gaps while the
// held messages are over their bounds, and notes whether it has gaps to
// repair.
func (r *receivers) settle(st *recvStream, out []envelope, lost []missed) ([]envelope, []missed) {
	out = r.release(st, out)
	for (r.heldN > heldCount || r.heldB > heldBytes) && len(st.held) > 0 {
		i := slices.IndexFunc(st.gaps, func(g gap) bool { return !g.silent })
		if i < 0 {
			break
		}
		g := st.gaps[i]
		st.gaps = slices.Delete(st.gaps, i, i+1)
		lost = append(lost, r.lose(st, g.from, g.to))
		out = r.release(st, out)
	}
	if slices.ContainsFunc(st.gaps, func(g gap) bool { return !g.silent }) {
		r.gapped[st] = struct{}{}
	} else {
		delete(r.gapped, st)
	}
	return out, lost
}

// trim gives up the oldest gaps beyond maxGaps.
func (r *receivers) trim(st *recvStream, lost []missed) []missed {
	for len(st.gaps) > maxGaps {
		g := st.gaps[0]
		st.gaps = st.gaps[1:]
		if !g.silent {
			lost = append(lost, r.lose(st, g.from, g.to))
		}
	}
	return lost
}

func (r *receivers) lose(st *recvStream, from, to uint64) missed {
	r.missed.Add(to - from + 1)
	return missed{origin: st.origin, channel: st.channel, from: from, to: to}
}

// heartbeat takes origin's announced last numbers: a stream this node
// listens to whose last number is above what it saw has a gap up to it; a
// stream it does not know yet starts there.
func (r *receivers) heartbeat(origin string, beats []beat, now time.Time) (out []envelope, lost []missed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range beats {
		byOrigin := r.channels[b.channel]
		if byOrigin == nil || b.stream == 0 {
			continue // not subscribed here
		}
		st := byOrigin[origin]
		if st == nil || st.id != b.stream {
			out, lost = r.restart(byOrigin, st, b.channel, origin, b.stream, b.seq, b.age, now)
			out, lost = r.settle(byOrigin[origin], out, lost)
			continue
		}
		st.seen = now
		if b.seq > st.high {
			st.gaps = append(st.gaps, gap{from: st.high + 1, to: b.seq, since: now})
			st.high = b.seq
			lost = r.trim(st, lost)
			out, lost = r.settle(st, out, lost)
		}
	}
	return out, lost
}

// fill closes numbers from..to of origin's stream on channel without a
// message: void (nothing to deliver) or, with gone, no longer available
// (counted missed and reported). It returns what that releases.
func (r *receivers) fill(channel, origin string, stream, from, to uint64, gone bool) (out []envelope, lost []missed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.channels[channel][origin]
	if st == nil || st.id != stream || from > to {
		return nil, nil
	}
	var keep []gap
	for _, g := range st.gaps {
		lo, hi := max(g.from, from), min(g.to, to)
		if lo > hi {
			keep = append(keep, g)
			continue
		}
		if gone && !g.silent {
			lost = append(lost, r.lose(st, lo, hi))
		}
		if g.from < lo {
			left := g
			left.to = lo - 1
			keep = append(keep, left)
		}
		if hi < g.to {
			right := g
			right.from = hi + 1
			keep = append(keep, right)
		}
	}
	st.gaps = keep
	return r.settle(st, nil, lost)
}

// due returns the repair requests to send now: gaps open for repairDelay,
// not asked for within repairRetry.
func (r *receivers) due(now time.Time) []repairRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	var reqs []repairRequest
	for st := range r.gapped {
		for i := range st.gaps {
			g := &st.gaps[i]
			if g.silent || now.Sub(g.since) < repairDelay || now.Sub(g.asked) < repairRetry {
				continue
			}
			g.asked = now
			reqs = append(reqs, repairRequest{origin: st.origin, channel: st.channel, stream: st.id, from: g.from, to: min(g.to, g.from+repairMax-1)})
		}
	}
	return reqs
}

// sweep gives up on gaps open since before now-gapWait, releasing what
// they held, and forgets streams idle for streamIdle. It returns what to
// deliver and the gaps given up on.
func (r *receivers) sweep(now time.Time) (out []envelope, lost []missed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, byOrigin := range r.channels {
		for origin, st := range byOrigin {
			keep := st.gaps[:0]
			for _, g := range st.gaps {
				switch {
				case now.Sub(g.since) < gapWait:
					keep = append(keep, g)
				case !g.silent:
					lost = append(lost, r.lose(st, g.from, g.to))
				}
			}
			clear(st.gaps[len(keep):])
			st.gaps = keep
			out, lost = r.settle(st, out, lost)
			if len(st.gaps) == 0 && len(st.held) == 0 && now.Sub(st.seen) >= streamIdle {
				delete(byOrigin, origin)
			}
		}
	}
	return out, lost
}

// forget drops the receive state of channels this node no longer
// subscribes: what is published there meanwhile is not for this node, and
// must not look like a gap when it subscribes again. Held messages of those
// channels are discarded with it.
func (r *receivers) forget(channels ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ch := range channels {
		for _, st := range r.channels[ch] {
			for i := range st.held {
				r.heldB -= st.held[i].size()
			}
			r.heldN -= len(st.held)
			r.held.Add(-int64(len(st.held)))
			delete(r.gapped, st)
		}
		delete(r.channels, ch)
		delete(r.since, ch)
	}
}
