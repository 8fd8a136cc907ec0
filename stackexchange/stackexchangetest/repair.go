package stackexchangetest

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// The repair rules: a broker outage on plain pub/sub, with the exchange's
// retransmit buffer (scaleout.Options.Retain) bringing every message
// published before, during and after it to every client, exactly once and
// in each origin's order.

const (
	evRepairB  = "rb" // broadcasts "<node>:<n>"
	evRepairTo = "rt" // messages To one client "<node>:<n>"
	// repairWithin is how soon after the broker's return the last missed
	// message must be delivered.
	repairWithin = 5 * time.Second
)

// repairCase is one outage scenario.
type repairCase struct {
	pause      bool          // SIGSTOP/SIGCONT instead of SIGKILL/restart
	outage     time.Duration // how long the brokers are down
	publishers []int         // nodes that broadcast at 50 msg/s
	to         bool          // each publisher also sends To a client of the next node, 50 msg/s
	quietAfter bool          // publishers stop when the broker returns
	retain     int           // Options.RetainMessages (0: default)
}

// repairRules are the repair rules of RunFaults.
var repairRules = []faultRule{
	{"Repair/Kill3s/AllNodesPublish", func(t *testing.T, ps []Process, f Factory) {
		testRepair(t, ps, f, repairCase{outage: 3 * time.Second, publishers: []int{0, 1, 2}, to: true})
	}},
	{"Repair/Pause5s/AllNodesPublish", func(t *testing.T, ps []Process, f Factory) {
		testRepair(t, ps, f, repairCase{pause: true, outage: 5 * time.Second, publishers: []int{0, 1, 2}, to: true})
	}},
	{"Repair/Kill3s/OnePublisherQuietAfter", func(t *testing.T, ps []Process, f Factory) {
		testRepair(t, ps, f, repairCase{outage: 3 * time.Second, publishers: []int{0}, to: true, quietAfter: true})
	}},
	{"Repair/Kill30s/BufferFor10s", func(t *testing.T, ps []Process, f Factory) {
		testRepair(t, ps, f, repairCase{outage: 30 * time.Second, publishers: []int{0}, quietAfter: true, retain: 500})
	}},
}

// repairTraffic sends a repairCase's messages and remembers what it sent.
type repairTraffic struct {
	*traffic // sent: broadcasts per node

	mu     sync.Mutex
	toSent map[string][]string // client id -> bodies To it, in order
}

func startRepairTraffic(cl *cluster, rc repairCase, cs []*client) *repairTraffic {
	tr := &repairTraffic{traffic: newTraffic(len(cl.nodes)), toSent: map[string][]string{}}
	for _, i := range rc.publishers {
		var targets []*client
		for _, c := range cs {
			if c.node == (i+1)%len(cl.nodes) {
				targets = append(targets, c)
			}
		}
		nd := cl.nodes[i]
		tr.every(4000, func(k int) { // 80 s at most
			body := fmt.Sprintf("%d:%d", i, k)
			nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evRepairB, Body: []byte(body)})
			tr.sent[i].Add(1)
			if rc.to {
				c := targets[k%len(targets)]
				tr.mu.Lock()
				tr.toSent[c.id] = append(tr.toSent[c.id], body)
				tr.mu.Unlock()
				nd.srv.Broadcast(nil, neffos.Message{Namespace: ns, Event: evRepairTo, To: c.id, Body: []byte(body)})
			}
		})
	}
	return tr
}

// repairCheck compares what the clients got with what was sent.
type repairCheck struct {
	expected, missing, dups, disorder int
	// last is the latest delivery of a message sent before the broker's
	// return (number below cut[node]).
	last   time.Time
	missed []string
}

func (tr *repairTraffic) check(cs []*client, publishers []int, cut []int64) repairCheck {
	var rc repairCheck
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, c := range cs {
		bySeq := map[string][]int{} // event/origin -> numbers in delivery order
		for _, r := range c.messages() {
			if r.event != evRepairB && r.event != evRepairTo {
				continue
			}
			from, n, _ := strings.Cut(string(r.body), ":")
			k, _ := strconv.Atoi(n)
			i, _ := strconv.Atoi(from)
			bySeq[r.event+"/"+from] = append(bySeq[r.event+"/"+from], k)
			if i < len(cut) && int64(k) < cut[i] && r.at.After(rc.last) {
				rc.last = r.at
			}
		}
		for _, i := range publishers {
			want := int(tr.sent[i].Load())
			rc.count(c.name+" "+evRepairB, bySeq[fmt.Sprintf("%s/%d", evRepairB, i)], func(k int) bool { return k < want }, want)
		}
		mine := map[string]int{}
		for _, body := range tr.toSent[c.id] {
			from, _, _ := strings.Cut(body, ":")
			mine[from]++
		}
		for from, want := range mine {
			rc.count(c.name+" "+evRepairTo, bySeq[evRepairTo+"/"+from], func(int) bool { return true }, want)
		}
	}
	return rc
}

// count adds one origin's numbers, as delivered to one client, to the
// totals: want numbers 0..want-1, each once, ascending.
func (rc *repairCheck) count(what string, got []int, valid func(int) bool, want int) {
	rc.expected += want
	seen := map[int]bool{}
	last := -1
	for _, k := range got {
		if !valid(k) {
			continue
		}
		if seen[k] {
			rc.dups++
			continue
		}
		if k < last {
			rc.disorder++
		}
		seen[k], last = true, k
	}
	rc.missing += want - len(seen)
	if want > len(seen) && len(rc.missed) < 5 {
		for k := 0; k < want; k++ {
			if !seen[k] && valid(k) {
				rc.missed = append(rc.missed, fmt.Sprintf("%s %d (%d of %d missing)", what, k, want-len(seen), want))
				break
			}
		}
	}
}

// testRepair runs one outage scenario on 3 nodes with 4 clients each.
func testRepair(t *testing.T, ps []Process, f Factory, rc repairCase) {
	const perNode = 4
	cl := newClusterOpts(t, f, Nodes, []string{ns}, false, func(*node) scaleout.Options {
		o := scaleout.Options{}
		if rc.retain > 0 {
			o.RetainMessages = rc.retain
			o.Retain = 5 * time.Minute
		}
		return o
	})
	stats := func() []scaleout.Stats {
		var out []scaleout.Stats
		for _, nd := range cl.nodes {
			if s, ok := nd.exc.(statser); ok {
				out = append(out, s.Stats())
			}
		}
		return out
	}
	if len(stats()) != len(cl.nodes) {
		t.Fatal("the exchange has no Stats() scaleout.Stats: the repair rules read Missed, Repaired and the buffer's size")
	}
	cs := spread(cl, perNode, ns)
	tr := startRepairTraffic(cl, rc, cs)
	defer tr.halt()

	// Cross-node traffic flows before the outage: every client got a
	// broadcast from every publisher, and each To target a message.
	if !waitUntil(20*time.Second, func() bool {
		for _, c := range cs {
			for _, i := range rc.publishers {
				if c.count(func(r received) bool {
					return r.event == evRepairB && strings.HasPrefix(string(r.body), fmt.Sprint(i, ":"))
				}) == 0 {
					return false
				}
			}
			targeted := false
			for _, i := range rc.publishers {
				targeted = targeted || c.node == (i+1)%len(cl.nodes)
			}
			if rc.to && targeted && c.count(func(r received) bool { return r.event == evRepairTo }) == 0 {
				return false
			}
		}
		return true
	}) {
		t.Fatal("broadcasts and To messages never reached every client before the outage")
	}
	base := stats()
	var peak atomic.Int64 // retained bytes, all nodes
	var peakN atomic.Int64
	sample := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() { // bounded by sample
		defer sampler.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, s := range stats() {
				peak.Store(max(peak.Load(), int64(s.RetainedBytes)))
				peakN.Store(max(peakN.Load(), int64(s.Retained)))
			}
			select {
			case <-sample:
				return
			case <-tick.C:
			}
		}
	}()
	stopSampler := func() {
		select {
		case <-sample:
		default:
			close(sample)
			sampler.Wait()
		}
	}
	defer stopSampler()

	sentAt := func() int64 {
		var n int64
		for i := range tr.sent {
			n += tr.sent[i].Load()
		}
		return n
	}
	before := sentAt()
	down := time.Now()
	stop, start := Process.Kill, Process.Restart
	if rc.pause {
		stop, start = Process.Pause, Process.Resume
	}
	for _, p := range ps {
		if err := stop(p); err != nil {
			t.Fatalf("take a broker down: %v", err)
		}
	}
	time.Sleep(rc.outage) // the outage's length, not synchronisation
	for _, p := range ps {
		if err := start(p); err != nil {
			t.Fatalf("bring a broker back: %v", err)
		}
	}
	back := time.Now()
	during := sentAt() - before
	cut := make([]int64, len(tr.sent))
	for i := range cut {
		cut[i] = tr.sent[i].Load()
	}
	if rc.quietAfter {
		tr.halt()
	} else {
		time.Sleep(2 * time.Second) // traffic after the return, not synchronisation
		tr.halt()
	}

	// Everything arrives, or (buffer overflow) everything the buffer held.
	var res repairCheck
	complete := func() bool {
		res = tr.check(cs, rc.publishers, cut)
		return res.missing == 0
	}
	deadline := 30 * time.Second
	if rc.retain > 0 {
		// Some are lost for good: wait until the receivers have settled
		// every gap (asked, and counted what the origin no longer had).
		complete = func() bool {
			res = tr.check(cs, rc.publishers, cut)
			missed := uint64(0)
			for j, s := range stats() {
				missed += (s.Missed - base[j].Missed) * perNode
			}
			held := 0
			for _, s := range stats() {
				held += s.Held
			}
			return held == 0 && uint64(res.missing) == missed && missed > 0
		}
	}
	settled := waitUntil(deadline, complete)
	stopSampler()
	after := stats()
	var repaired, resent, missed, dupsDropped uint64
	for j := range after {
		repaired += after[j].Repaired - base[j].Repaired
		resent += after[j].Resent - base[j].Resent
		missed += after[j].Missed - base[j].Missed
		dupsDropped += after[j].Duplicates - base[j].Duplicates
	}
	lastAfter := res.last.Sub(back).Round(time.Millisecond)
	t.Logf("outage %v (%s); sent during it %d messages (all nodes, broadcasts and To); deliveries expected %d, missing %d, duplicated %d, out of order %d; "+
		"last delivery of a message sent before the return %v after it; repaired %d, resent %d, missed %d, duplicate envelopes dropped %d; retransmit buffer peak %d messages, %d bytes (one node)",
		back.Sub(down).Round(time.Millisecond), map[bool]string{true: "SIGSTOP", false: "SIGKILL"}[rc.pause], during,
		res.expected, res.missing, res.dups, res.disorder, lastAfter, repaired, resent, missed, dupsDropped, peakN.Load(), peak.Load())
	if res.dups > 0 || res.disorder > 0 {
		t.Errorf("%d deliveries duplicated, %d out of order; want each exactly once, in its origin's order", res.dups, res.disorder)
	}
	if rc.retain > 0 {
		// Only what overflowed the buffer is lost, and it is all counted.
		if !settled {
			t.Errorf("missing deliveries %d, counted missed %d x %d clients per node: want equal and nonzero (only what overflowed the buffer)", res.missing, missed, perNode)
		}
		if peakN.Load() > int64(rc.retain) || peak.Load() > scaleout.DefaultRetainBytes {
			t.Errorf("retransmit buffer peak %d messages, %d bytes; bound %d messages, %d bytes", peakN.Load(), peak.Load(), rc.retain, scaleout.DefaultRetainBytes)
		}
		return
	}
	if !settled {
		t.Fatalf("%d of %d deliveries still missing 30 s after the broker's return (numbers %v...)", res.missing, res.expected, res.missed)
	}
	if missed > 0 {
		t.Errorf("%d messages counted missed; want none (the buffer held everything)", missed)
	}
	if lastAfter > repairWithin {
		t.Errorf("the last delivery came %v after the broker's return; want within %v", lastAfter, repairWithin)
	}
}
