package scaleout

import (
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// history is the sending side of sequencing and repair: it numbers this
// node's envelopes, one stream per channel (1, 2, 3, ... in publish order),
// and keeps each numbered envelope, encoded, in a retransmit buffer, so a
// node that missed some of them (a broker outage, a subscription being
// restored) can ask for them by number.
//
// The buffer is one FIFO across streams, bounded by Options.Retain (age),
// RetainMessages and RetainBytes: appending past a bound evicts the oldest
// envelopes. A broadcast keeps its payload; an Ask, a reply or a To message
// re-routed through its namespace channel keeps only its number (void: its
// number is answered "nothing to deliver", so receivers close the gap
// without delivering it twice or replaying an Ask).
//
// Locks: mu is taken under pipeline.mu (stamping a queued broadcast) and
// alone otherwise; it is never held while calling anything else.
type history struct {
	maxAge   time.Duration // <= 0: nothing kept
	maxCount int
	maxBytes int

	mu      sync.Mutex
	next    uint64
	streams map[string]*sendStream // by channel
	byID    map[uint64]*sendStream
	fifo    []*kept // oldest first, from head
	head    int
	bytes   int

	count, size atomic.Int64 // len(fifo), bytes: for Stats
}

type sendStream struct {
	id      uint64
	channel string
	seq     uint64 // last number given
	created time.Time
	used    time.Time
	pinned  bool    // a namespace channel: announced even when idle, never swept
	kept    []*kept // retained envelopes of this stream, ascending, contiguous
}

type kept struct {
	st      *sendStream
	seq     uint64
	payload []byte // nil: void
	at      time.Time
}

// keptOverhead is the bookkeeping counted per retained envelope on top of
// its payload.
const keptOverhead = 64

func newHistory(maxAge time.Duration, maxCount, maxBytes int) *history {
	return &history{
		maxAge: maxAge, maxCount: maxCount, maxBytes: maxBytes,
		streams: make(map[string]*sendStream),
		byID:    make(map[uint64]*sendStream),
	}
}

func (h *history) stream(channel string) *sendStream {
	st := h.streams[channel]
	if st == nil {
		h.next++
		st = &sendStream{id: h.next, channel: channel, created: time.Now()}
		h.streams[channel] = st
		h.byID[st.id] = st
	}
	return st
}

// pin opens channel's stream now (number 0) and keeps announcing it, so
// receivers know it before its first message: a first message lost in an
// outage is then a gap they repair, not a fresh start.
func (h *history) pin(channel string, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.stream(channel)
	st.pinned = true
	st.used = now
}

// stamp gives env the next number of channel's stream, encodes it and
// retains it (its payload when keep, its number only otherwise). It returns
// the encoding. Numbers are given in the order of the calls.
func (h *history) stamp(channel string, env *envelope, keep bool, now time.Time) []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.stream(channel)
	st.seq++
	st.used = now
	env.stream, env.seq = st.id, st.seq
	env.age = ageMillis(now.Sub(st.created))
	payload := encodeEnvelope(env)
	if h.maxAge > 0 {
		k := &kept{st: st, seq: st.seq, at: now}
		if keep {
			k.payload = payload
		}
		st.kept = append(st.kept, k)
		h.fifo = append(h.fifo, k)
		h.bytes += len(k.payload) + keptOverhead
		h.evictLocked(now)
	}
	return payload
}

// on reports whether the buffer keeps anything.
func (h *history) on() bool { return h.maxAge > 0 }

// void marks a retained number as nothing to deliver (a To message sent
// again through its namespace channel).
func (h *history) void(stream, seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if k := h.findLocked(stream, seq); k != nil && k.payload != nil {
		h.bytes -= len(k.payload)
		k.payload = nil
		h.size.Store(int64(h.bytes))
	}
}

// holds reports whether the buffer still holds stream's number seq.
func (h *history) holds(stream, seq uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.findLocked(stream, seq) != nil
}

func (h *history) findLocked(stream, seq uint64) *kept {
	st := h.byID[stream]
	if st == nil || len(st.kept) == 0 || seq < st.kept[0].seq || seq > st.seq {
		return nil
	}
	return st.kept[seq-st.kept[0].seq]
}

func (h *history) evictLocked(now time.Time) {
	for h.head < len(h.fifo) {
		k := h.fifo[h.head]
		over := len(h.fifo)-h.head > h.maxCount || h.bytes > h.maxBytes
		if !over && now.Sub(k.at) < h.maxAge {
			break
		}
		h.bytes -= len(k.payload) + keptOverhead
		k.st.kept[0] = nil
		k.st.kept = k.st.kept[1:]
		h.fifo[h.head] = nil
		h.head++
	}
	// Compact once the evicted head is half the slice: amortised O(1).
	if h.head > 0 && h.head >= len(h.fifo)/2 {
		rest := copy(h.fifo, h.fifo[h.head:])
		clear(h.fifo[rest:])
		h.fifo = h.fifo[:rest]
		h.head = 0
	}
	h.count.Store(int64(len(h.fifo) - h.head))
	h.size.Store(int64(h.bytes))
}

// answer is what the buffer has for a repair request.
type answer struct {
	gone     [2]uint64   // numbers no longer held (from, to); from 0: none
	void     [][2]uint64 // ranges of numbers with nothing to deliver
	payloads [][]byte    // retained envelopes, in order
}

// lookup returns what the buffer holds of stream's numbers from..to on
// channel: those it no longer holds (or never numbered), those that are
// void, and the payloads of the rest. Numbers above the stream's last are
// ignored.
func (h *history) lookup(channel string, stream, from, to uint64) answer {
	var a answer
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.byID[stream]
	if st == nil || st.channel != channel {
		a.gone = [2]uint64{from, to}
		return a
	}
	to = min(to, st.seq)
	if from > to {
		return a
	}
	first := st.seq + 1 // lowest number held
	if len(st.kept) > 0 {
		first = st.kept[0].seq
	}
	if from < first {
		a.gone = [2]uint64{from, min(to, first-1)}
		from = first
	}
	for n := from; n <= to; n++ {
		k := st.kept[n-first]
		if k.payload != nil {
			a.payloads = append(a.payloads, k.payload)
			continue
		}
		if l := len(a.void); l > 0 && a.void[l-1][1] == n-1 {
			a.void[l-1][1] = n
		} else {
			a.void = append(a.void, [2]uint64{n, n})
		}
	}
	return a
}

// announce appends the heartbeat entries: for every pinned stream, and
// every stream with retained envelopes, its channel, id and last number.
func (h *history) announce(dst []beat) []beat {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, st := range h.byID {
		if st.pinned || len(st.kept) > 0 {
			dst = append(dst, beat{channel: st.channel, stream: st.id, seq: st.seq, age: ageMillis(time.Since(st.created))})
		}
	}
	return dst
}

// sweep evicts what is older than the buffer's age and forgets streams idle
// since before cutoff with nothing retained (a channel used again later
// starts a new stream, which receivers take as a fresh start).
func (h *history) sweep(now, cutoff time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.maxAge > 0 {
		h.evictLocked(now)
	}
	for ch, st := range h.streams {
		if !st.pinned && len(st.kept) == 0 && st.used.Before(cutoff) {
			delete(h.streams, ch)
			delete(h.byID, st.id)
		}
	}
}

// beat is one heartbeat entry: the last number of a stream.
type beat struct {
	channel          string
	stream, seq, age uint64 // age: ms since the stream started
}

func ageMillis(d time.Duration) uint64 { return uint64(max(d, 0) / time.Millisecond) }

// maxBeatBody bounds one heartbeat envelope's body; more entries go in
// further envelopes.
const maxBeatBody = 32 << 10

// encodeBeats encodes a heartbeat: the node's info, then entries, in
// bodies of at most maxBeatBody bytes each (every body starts with the
// info; an entry larger than the bound gets a body of its own).
func encodeBeats(info []byte, entries []beat) [][]byte {
	head := appendString(nil, string(info))
	bodies := [][]byte{slices.Clone(head)}
	for _, e := range entries {
		b := bodies[len(bodies)-1]
		n := 4*binary.MaxVarintLen64 + len(e.channel)
		if len(b) > len(head) && len(b)+n > maxBeatBody {
			b = slices.Clone(head)
			bodies = append(bodies, b)
		}
		b = appendString(b, e.channel)
		b = binary.AppendUvarint(b, e.stream)
		b = binary.AppendUvarint(b, e.seq)
		b = binary.AppendUvarint(b, e.age)
		bodies[len(bodies)-1] = b
	}
	return bodies
}

// decodeBeats parses a heartbeat body; it reports false for a malformed one.
func decodeBeats(body []byte) (info []byte, out []beat, ok bool) {
	r := reader{b: body}
	info = []byte(r.string())
	for len(r.b) > 0 && r.err == "" {
		e := beat{channel: r.string()}
		e.stream = r.uvarint()
		e.seq = r.uvarint()
		e.age = r.uvarint()
		out = append(out, e)
	}
	return info, out, r.err == ""
}
