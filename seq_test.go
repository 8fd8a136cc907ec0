package scaleout

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func seqs(out []envelope) []uint64 {
	var s []uint64
	for _, e := range out {
		s = append(s, e.seq)
	}
	return s
}

// TestReceiversAccept: duplicates are dropped, messages above a gap are
// held until it is filled and then come out in order, numbers below the
// first contact are delivered at once, and a new stream (a restarted node,
// or a stream the sender forgot) starts fresh.
func TestReceiversAccept(t *testing.T) {
	r := newReceivers()
	now := time.Now()
	steps := []struct {
		stream, seq uint64
		out         []uint64 // delivered by this step, in order
	}{
		{1, 5, []uint64{5}},           // first contact: starts here
		{1, 6, []uint64{6}},           // next
		{1, 6, nil},                   // duplicate
		{1, 3, []uint64{3}},           // below the first number: at once
		{1, 3, nil},                   // duplicate of it
		{1, 9, nil},                   // opens the gap 7-8: held
		{1, 10, nil},                  // held behind it
		{1, 8, nil},                   // fills 8, 7 still missing: held
		{1, 8, nil},                   // duplicate of a held one
		{1, 7, []uint64{7, 8, 9, 10}}, // the gap closes: all in order
		{1, 5, nil},                   // old
		{2, 1, []uint64{1}},           // a new stream of the same origin
		{2, 2, []uint64{2}},
	}
	for i, s := range steps {
		out, lost, _ := r.accept("ch", &envelope{origin: "a", stream: s.stream, seq: s.seq}, now, false)
		if !slices.Equal(seqs(out), s.out) || lost != nil {
			t.Fatalf("step %d (stream %d seq %d): delivered %v lost %v, want %v", i, s.stream, s.seq, seqs(out), lost, s.out)
		}
	}
	if d := r.duplicates.Load(); d != 4 {
		t.Errorf("duplicates = %d, want 4", d)
	}
	// A gap that nothing fills is given up after gapWait: counted once,
	// and what it held is released.
	r.accept("ch", &envelope{origin: "a", stream: 2, seq: 5}, now, false)
	if r.held.Load() != 1 {
		t.Fatalf("held %d, want 1", r.held.Load())
	}
	if out, lost := r.sweep(now.Add(gapWait / 2)); out != nil || lost != nil {
		t.Errorf("gap given up before gapWait: %v %v", seqs(out), lost)
	}
	out, lost := r.sweep(now.Add(gapWait))
	if len(lost) != 1 || lost[0].from != 3 || lost[0].to != 4 || r.missed.Load() != 2 || !slices.Equal(seqs(out), []uint64{5}) {
		t.Fatalf("after gapWait: delivered %v lost %v, missed %d; want 5 delivered, numbers 3-4 missed", seqs(out), lost, r.missed.Load())
	}
	if lost[0].Error() == "" {
		t.Error("a missed range has no description")
	}
	if _, lost := r.sweep(now.Add(2 * gapWait)); lost != nil {
		t.Errorf("a gap was reported twice: %v", lost)
	}
	// Unsequenced envelopes (version 1 senders) are always delivered.
	for range 2 {
		if out, _, _ := r.accept("ch", &envelope{origin: "old"}, now, false); len(out) != 1 {
			t.Error("an unsequenced envelope was dropped")
		}
	}
	// A repair for a stream this node does not track is dropped.
	if out, _, _ := r.accept("other", &envelope{origin: "a", stream: 7, seq: 1}, now, true); out != nil {
		t.Error("a repair created receive state")
	}
	// Forgetting a channel (unsubscribed) makes the next number a fresh
	// start, not a gap.
	r.forget("ch")
	r.accept("ch", &envelope{origin: "a", stream: 2, seq: 50}, now, false)
	if _, lost := r.sweep(now.Add(3 * gapWait)); lost != nil {
		t.Errorf("a forgotten channel's next number opened a gap: %v", lost)
	}
	if r.held.Load() != 0 || r.heldN != 0 || r.heldB != 0 {
		t.Errorf("held %d/%d/%d after everything was released", r.held.Load(), r.heldN, r.heldB)
	}
}

// TestReceiversRepair: a heartbeat above what was seen opens a gap; after
// repairDelay it is asked for (once per repairRetry, at most repairMax
// numbers); a void answer closes numbers without delivering them, a gone
// one counts them missed, and a resend is delivered in order.
func TestReceiversRepair(t *testing.T) {
	r := newReceivers()
	now := time.Now()
	r.listen("ch")
	// A heartbeat before any message: the stream starts at its number.
	r.heartbeat("a", []beat{{channel: "ch", stream: 1, seq: 2}, {channel: "elsewhere", stream: 9, seq: 5}}, now)
	if len(r.channels["elsewhere"]) != 0 {
		t.Fatal("a heartbeat for a channel this node does not read created state")
	}
	out, _, _ := r.accept("ch", &envelope{origin: "a", stream: 1, seq: 3}, now, false)
	if !slices.Equal(seqs(out), []uint64{3}) {
		t.Fatalf("first message after the heartbeat: %v", seqs(out))
	}
	// The origin sent 4..3000 while this node did not hear: a heartbeat says so.
	r.heartbeat("a", []beat{{channel: "ch", stream: 1, seq: 3000}}, now)
	if reqs := r.due(now.Add(repairDelay / 2)); reqs != nil {
		t.Errorf("asked before repairDelay: %v", reqs)
	}
	reqs := r.due(now.Add(repairDelay))
	if len(reqs) != 1 || reqs[0] != (repairRequest{origin: "a", channel: "ch", stream: 1, from: 4, to: 4 + repairMax - 1}) {
		t.Fatalf("requests %+v", reqs)
	}
	if reqs := r.due(now.Add(repairDelay + repairRetry/2)); reqs != nil {
		t.Errorf("asked again before repairRetry: %v", reqs)
	}
	// New traffic is held behind the gap.
	if out, _, _ := r.accept("ch", &envelope{origin: "a", stream: 1, seq: 3001}, now, false); out != nil {
		t.Fatalf("delivered past a gap: %v", seqs(out))
	}
	// The origin no longer has 4..9, 10 was an Ask (void), 11.. it resends.
	out, lost := r.fill("ch", "a", 1, 4, 9, true)
	if out != nil || len(lost) != 1 || r.missed.Load() != 6 {
		t.Fatalf("gone: out %v lost %v missed %d", seqs(out), lost, r.missed.Load())
	}
	if out, lost := r.fill("ch", "a", 1, 10, 10, false); out != nil || lost != nil || r.missed.Load() != 6 {
		t.Fatalf("void: out %v lost %v", seqs(out), lost)
	}
	var got []uint64
	for n := uint64(3000); n >= 11; n-- { // backwards: the worst order
		out, _, fresh := r.accept("ch", &envelope{origin: "a", stream: 1, seq: n}, now, true)
		if !fresh {
			t.Fatalf("resend %d not fresh", n)
		}
		got = append(got, seqs(out)...)
	}
	if len(got) != 2991 || got[0] != 11 || got[len(got)-1] != 3001 || !slices.IsSorted(got) {
		t.Fatalf("delivered %d messages, %v ... %v, want 11..3001 in order", len(got), got[:3], got[len(got)-3:])
	}
	if reqs := r.due(now.Add(time.Hour)); reqs != nil {
		t.Errorf("requests after the gap closed: %v", reqs)
	}
	if r.held.Load() != 0 {
		t.Errorf("held %d", r.held.Load())
	}
}

// TestReceiversGapBound: a stream with more than maxGaps open gaps gives
// the oldest up at once, so memory per stream stays bounded.
func TestReceiversGapBound(t *testing.T) {
	r := newReceivers()
	now := time.Now()
	r.accept("ch", &envelope{origin: "a", stream: 1, seq: 1}, now, false)
	var lost []missed
	for i := uint64(1); i <= maxGaps+3; i++ {
		_, l, _ := r.accept("ch", &envelope{origin: "a", stream: 1, seq: 1 + 2*i}, now, false)
		lost = append(lost, l...)
	}
	if len(lost) != 3 || r.missed.Load() != 3 {
		t.Errorf("%d gaps given up at once (missed %d), want 3", len(lost), r.missed.Load())
	}
}

// TestHistory: numbers follow publish order per channel; the buffer keeps
// broadcasts' payloads and other numbers as void, evicts by count, bytes
// and age, answers a lookup with gone, void and payloads; a channel
// forgotten after streamIdle starts a new stream.
func TestHistory(t *testing.T) {
	h := newHistory(time.Minute, 4, 1<<20)
	now := time.Now()
	stamp := func(ch string, keep bool) envelope {
		env := envelope{kind: kindBroadcast, origin: "n"}
		h.stamp(ch, &env, keep, now)
		return env
	}
	a1, a2, b1 := stamp("a", true), stamp("a", false), stamp("b", true)
	if a1.seq != 1 || a2.seq != 2 || a1.stream != a2.stream || b1.seq != 1 || b1.stream == a1.stream {
		t.Fatalf("stamps a1 %d/%d a2 %d/%d b1 %d/%d", a1.stream, a1.seq, a2.stream, a2.seq, b1.stream, b1.seq)
	}
	a3, a4 := stamp("a", true), stamp("a", true) // 5 kept: a1 evicted
	if h.count.Load() != 4 || h.holds(a1.stream, 1) || !h.holds(a1.stream, 2) {
		t.Fatalf("count %d, holds 1: %v", h.count.Load(), h.holds(a1.stream, 1))
	}
	h.void(a3.stream, a3.seq)
	a := h.lookup("a", a1.stream, 1, 10)
	if a.gone != [2]uint64{1, 1} || !slices.Equal(a.void, [][2]uint64{{2, 3}}) || len(a.payloads) != 1 {
		t.Fatalf("lookup: gone %v void %v payloads %d", a.gone, a.void, len(a.payloads))
	}
	if got, err := decodeEnvelope(a.payloads[0]); err != nil || got.seq != a4.seq {
		t.Fatalf("payload: %v %v", got.seq, err)
	}
	if a := h.lookup("b", a1.stream, 1, 2); a.gone != [2]uint64{1, 2} {
		t.Errorf("a lookup with the wrong channel: %+v", a)
	}
	// Beats list streams with something retained, and pinned ones.
	h.pin("p", now)
	beats := h.announce(nil)
	if len(beats) != 3 {
		t.Fatalf("beats %+v", beats)
	}
	bodies := encodeBeats([]byte("info"), beats)
	if info, back, ok := decodeBeats(bodies[0]); !ok || len(bodies) != 1 || !slices.Equal(back, beats) || string(info) != "info" {
		t.Fatalf("beats round trip: %q %+v %v", info, back, ok)
	}
	many := make([]beat, 5000)
	for i := range many {
		many[i] = beat{channel: fmt.Sprintf("channel-%d", i), stream: uint64(i), seq: 7, age: 9}
	}
	var back []beat
	for _, b := range encodeBeats([]byte("info"), many) {
		if len(b) > maxBeatBody {
			t.Fatalf("a heartbeat body of %d bytes", len(b))
		}
		info, part, ok := decodeBeats(b)
		if !ok || string(info) != "info" {
			t.Fatal("a heartbeat part without the node's info")
		}
		back = append(back, part...)
	}
	if !slices.Equal(back, many) {
		t.Fatalf("split heartbeats: %d entries back of %d", len(back), len(many))
	}
	if _, _, ok := decodeBeats([]byte{0xff}); ok {
		t.Error("a malformed heartbeat decoded")
	}
	// Age: everything goes; idle streams are forgotten, pinned ones kept.
	h.sweep(now.Add(2*time.Minute), now.Add(time.Second))
	if h.count.Load() != 0 || h.size.Load() != 0 {
		t.Fatalf("after the age: %d messages, %d bytes", h.count.Load(), h.size.Load())
	}
	if a5 := stamp("a", true); a5.stream == a1.stream || a5.seq != 1 {
		t.Errorf("after the sweep: stream %d seq %d, want a new stream from 1", a5.stream, a5.seq)
	}
	if len(h.announce(nil)) != 2 { // p (pinned) and the new a
		t.Errorf("pinned stream forgotten: %+v", h.announce(nil))
	}
	// Bytes bound.
	hb := newHistory(time.Minute, 100, 3*keptOverhead+30)
	for range 10 {
		env := envelope{kind: kindBroadcast, origin: "n", body: make([]byte, 10)}
		hb.stamp("x", &env, true, now)
	}
	if hb.size.Load() > 3*keptOverhead+30 || hb.count.Load() == 0 {
		t.Errorf("bytes bound: %d bytes, %d messages", hb.size.Load(), hb.count.Load())
	}
}
