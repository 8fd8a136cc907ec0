package scaleout

import (
	"testing"
	"time"
)

// TestReceiversAccept: duplicates are dropped, gaps wait gapWait for a late
// copy and are then counted once, and a new stream (a restarted node, or a
// stream the sender forgot) starts fresh.
func TestReceiversAccept(t *testing.T) {
	r := newReceivers()
	now := time.Now()
	env := func(stream, seq uint64) *envelope {
		return &envelope{origin: "a", stream: stream, seq: seq}
	}
	steps := []struct {
		stream, seq uint64
		fresh       bool
	}{
		{1, 5, true},  // first contact: starts here
		{1, 6, true},  // next
		{1, 6, false}, // duplicate
		{1, 3, true},  // below the first number: a publish overtaken
		{1, 3, false}, // duplicate of it
		{1, 9, true},  // opens the gap 7-8
		{1, 8, true},  // late, fills 8
		{1, 8, false}, // duplicate of the late one
		{1, 5, false}, // old
		{2, 1, true},  // a new stream of the same origin
		{2, 2, true},
	}
	for i, s := range steps {
		fresh, lost := r.accept("ch", env(s.stream, s.seq), now)
		if fresh != s.fresh || lost != nil {
			t.Fatalf("step %d (stream %d seq %d): fresh %v lost %v, want %v", i, s.stream, s.seq, fresh, lost, s.fresh)
		}
	}
	if d := r.duplicates.Load(); d != 4 {
		t.Errorf("duplicates = %d, want 4", d)
	}
	// The new stream replaced the old one: its open gap (7) is gone with
	// it. Open one on stream 2 and let it expire.
	r.accept("ch", env(2, 5), now)
	if lost := r.sweep(now.Add(gapWait / 2)); lost != nil {
		t.Errorf("gap given up before gapWait: %v", lost)
	}
	lost := r.sweep(now.Add(gapWait))
	if len(lost) != 1 || lost[0].from != 3 || lost[0].to != 4 || r.missed.Load() != 2 {
		t.Fatalf("after gapWait: lost %v, missed %d; want numbers 3-4, 2 missed", lost, r.missed.Load())
	}
	if lost[0].Error() == "" {
		t.Error("a missed range has no description")
	}
	if lost := r.sweep(now.Add(2 * gapWait)); lost != nil {
		t.Errorf("a gap was reported twice: %v", lost)
	}
	// Unsequenced envelopes (version 1 senders) are always delivered.
	for range 2 {
		if fresh, _ := r.accept("ch", &envelope{origin: "old"}, now); !fresh {
			t.Error("an unsequenced envelope was dropped")
		}
	}
	// Forgetting a channel (unsubscribed) makes the next number a fresh
	// start, not a gap.
	r.forget("ch")
	r.accept("ch", env(2, 50), now)
	if lost := r.sweep(now.Add(3 * gapWait)); lost != nil {
		t.Errorf("a forgotten channel's next number opened a gap: %v", lost)
	}
}

// TestReceiversGapBound: a stream with more than maxGaps open gaps gives
// the oldest up at once, so memory per stream stays bounded.
func TestReceiversGapBound(t *testing.T) {
	r := newReceivers()
	now := time.Now()
	r.accept("ch", &envelope{origin: "a", stream: 1, seq: 1}, now)
	var lost []missed
	for i := uint64(1); i <= maxGaps+3; i++ {
		_, l := r.accept("ch", &envelope{origin: "a", stream: 1, seq: 1 + 2*i}, now)
		lost = append(lost, l...)
	}
	if len(lost) != 3 || r.missed.Load() != 3 {
		t.Errorf("%d gaps given up at once (missed %d), want 3", len(lost), r.missed.Load())
	}
}

// TestSendersStamp: numbers follow publish order per channel, and a
// channel forgotten after streamIdle starts a new stream.
func TestSendersStamp(t *testing.T) {
	s := newSenders()
	now := time.Now()
	var a1, a2, b1 envelope
	s.stamp("a", &a1, now)
	s.stamp("a", &a2, now)
	s.stamp("b", &b1, now)
	if a1.seq != 1 || a2.seq != 2 || a1.stream != a2.stream || b1.seq != 1 || b1.stream == a1.stream {
		t.Fatalf("stamps a1 %d/%d a2 %d/%d b1 %d/%d", a1.stream, a1.seq, a2.stream, a2.seq, b1.stream, b1.seq)
	}
	s.sweep(now.Add(time.Second))
	var a3 envelope
	s.stamp("a", &a3, now)
	if a3.stream == a1.stream || a3.seq != 1 {
		t.Errorf("after the sweep: stream %d seq %d, want a new stream from 1", a3.stream, a3.seq)
	}
}
