package main

import (
	"slices"
	"testing"
	"time"

	"github.com/kataras/neffos"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

func TestBodyRoundTrip(t *testing.T) {
	now := time.Unix(1700000000, 123)
	seq, node, ts, ok := parseBody(body(1234, 2, now))
	if !ok || seq != 1234 || node != 2 || ts != now.UnixNano() {
		t.Fatalf("parseBody(body(1234, 2, t)) = %d, %d, %d, %v", seq, node, ts, ok)
	}
	for _, b := range []string{"", "1", "1,2", "1,2,", ",2,3", "1,,3", "1,2,3,4", "1,x,3", "-1,2,3"} {
		if _, _, _, ok := parseBody([]byte(b)); ok {
			t.Errorf("parseBody(%q) ok", b)
		}
	}
}

// TestOrderViolations: a message that arrives after a later one of the
// same publisher is a violation; other publishers and duplicates are not.
func TestOrderViolations(t *testing.T) {
	tl := newTally("e", 10, 2, 1, false)
	current.Store(tl)
	defer current.Store(nil)
	c := &client{idx: 0}
	for _, m := range []struct{ seq, node int }{
		{0, 0}, {2, 0}, {1, 1}, {3, 1}, // in order per node, interleaved across nodes
		{1, 0},         // after 2 of node 0: violation
		{4, 0}, {4, 0}, // duplicate: counted, not a violation
		{3, 0}, // violation
		{5, 1},
	} {
		c.record(neffos.Message{Event: "e", Body: body(m.seq, m.node, time.Now())})
	}
	if got := tl.order.Load(); got != 2 {
		t.Errorf("order violations = %d, want 2", got)
	}
	if got := tl.total.Load(); got != 9 {
		t.Errorf("deliveries = %d, want 9", got)
	}
	c.record(neffos.Message{Event: "e", Body: body(1, 2, time.Now())}) // node out of range
	if tl.bad.Load() != 1 {
		t.Errorf("bad = %d, want 1", tl.bad.Load())
	}
}

func TestPickReference(t *testing.T) {
	for _, c := range []struct {
		cands []refCandidate
		want  string
	}{
		{[]refCandidate{{"none-sync", true, 100}, {"none-async", false, 300}}, "none-sync"},
		{[]refCandidate{{"none-sync", true, 100}, {"none-async", true, 300}}, "none-async"},
		{[]refCandidate{{"none-sync", false, 100}, {"none-async", false, 300}}, ""},
		{nil, ""},
	} {
		if got := pickReference(c.cands); got != c.want {
			t.Errorf("pickReference(%v) = %q, want %q", c.cands, got, c.want)
		}
	}
	if s := spreadOf([]float64{3, 1, 2, 10}); s.Median != 2.5 || s.Min != 1 || s.Max != 10 || s.N != 4 {
		t.Errorf("spreadOf = %+v", s)
	}
}

// TestPlotLegendCoversNoData draws the committed results as `-replot`
// does: the legend lies inside the image and overlaps neither plot (it
// covered the NATS point at N=1000 when it sat inside the left plot).
func TestPlotLegendCoversNoData(t *testing.T) {
	sums, err := readSummaries("results/results.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	cfg := summariesConfig(sums)
	if !slices.Equal(cfg.ns, []int{300, 1000}) || len(cfg.exchanges) != 6 || cfg.repeat != 3 || cfg.k != 3 {
		t.Fatalf("config from results.jsonl: ns %v, exchanges %v, repeat %d, k %d", cfg.ns, cfg.exchanges, cfg.repeat, cfg.k)
	}
	img := vgimg.New(vg.Points(plotWidth), vg.Points(plotHeight))
	dc := draw.New(img)
	layout, err := drawPlots(dc, cfg, sums)
	if err != nil {
		t.Fatal(err)
	}
	in := func(r, outer vg.Rectangle) bool {
		return r.Min.X >= outer.Min.X && r.Max.X <= outer.Max.X && r.Min.Y >= outer.Min.Y && r.Max.Y <= outer.Max.Y
	}
	overlap := func(a, b vg.Rectangle) bool {
		return a.Min.X < b.Max.X && b.Min.X < a.Max.X && a.Min.Y < b.Max.Y && b.Min.Y < a.Max.Y
	}
	if l := layout.legend; l.Max.X <= l.Min.X || l.Max.Y <= l.Min.Y || !in(l, dc.Rectangle) {
		t.Errorf("legend %v: empty or outside the image %v", l, dc.Rectangle)
	}
	if len(layout.tiles) != 2 {
		t.Fatalf("%d plot tiles, want 2", len(layout.tiles))
	}
	for i, tile := range layout.tiles {
		if overlap(layout.legend, tile) {
			t.Errorf("legend %v overlaps plot %d %v", layout.legend, i, tile)
		}
	}
}
