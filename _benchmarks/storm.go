package main

import (
	"fmt"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// The connect storm: cfg.storm clients dial into a cluster at once, with
// cfg.stormDialers concurrent dialers, each into namespace nsBench; timed
// from the first dial to the last Connect returning. Every exchange of
// cfg.stormExchanges runs once per repeat, interleaved as the scenarios are
// (repeat.go); the report gives medians and the spread.

// StormRun is one connect storm: one JSON line of storm.jsonl.
type StormRun struct {
	Exchange  string  `json:"exchange"`
	Repeat    int     `json:"repeat"` // 1-based
	Nodes     int     `json:"nodes"`
	Clients   int     `json:"clients"`
	Dialers   int     `json:"dialers"`
	Connected int     `json:"connected"`
	Failed    int     `json:"failed"`
	Seconds   float64 `json:"seconds"` // first dial to last connect
	PerSec    float64 `json:"connects_per_sec"`
	Note      string  `json:"note,omitempty"`
	Error     string  `json:"error,omitempty"`
}

// runStorms runs cfg.repeat rounds of one storm per exchange.
func (r *runner) runStorms() []*StormRun {
	var runs []*StormRun
	interleave(r.cfg.repeat, r.cfg.stormExchanges, func(rep int, ex string) {
		run := r.storm(ex, rep)
		runs = append(runs, run)
		logf("  storm %-13s #%d C=%d D=%d: %d connected in %.2fs, %.0f/s %s%s", ex, rep, run.Clients, run.Dialers,
			run.Connected, run.Seconds, run.PerSec, run.Note, run.Error)
	})
	return runs
}

// storm runs one connect storm on a fresh cluster (and a fresh broker).
func (r *runner) storm(ex string, rep int) (run *StormRun) {
	run = &StormRun{Exchange: ex, Repeat: rep, Clients: r.cfg.storm, Dialers: r.cfg.stormDialers}
	defer func() {
		if p := recover(); p != nil {
			run.Error = fmt.Sprintf("panic: %v", p)
		}
	}()
	b, err := startBroker(ex)
	if err != nil {
		run.Error = err.Error()
		return run
	}
	builtin := strings.HasSuffix(ex, "-builtin")
	if b != nil && builtin {
		// neffos v0.0.24's exchanges cannot be closed: keep their broker
		// until the end of the run, as runOne does.
		r.procs = append(r.procs, b)
	}
	cl, err := startCluster(ex, r.cfg.k, b)
	if err != nil {
		if b != nil && !builtin {
			b.stop()
		}
		run.Error = err.Error()
		return run
	}
	run.Nodes = len(cl.nodes)
	runtime.GC() // the previous storm's garbage is not this one's cost

	stop := r.profile(fmt.Sprintf("cpu-storm-%s-r%d.pprof", ex, rep))
	s := connectClients(cl, r.cfg.storm, r.cfg.stormDialers, r.cfg.stormTimeout)
	stop()
	run.Connected, run.Failed = int(s.Delivered), int(s.Missing)
	run.Seconds, run.PerSec, run.Note = s.Seconds, s.PerSec, s.Note

	cl.close()
	// Bounded: the nodes' connections are gone before the next storm.
	deadline := time.Now().Add(10 * time.Second)
	for cl.serverConns() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	cl.clients = nil
	if b != nil && !builtin {
		b.stop() // our exchanges are closed: nothing uses it any more
	}
	return run
}

// stormStats is one exchange's storms over all repeats.
type stormStats struct {
	exchange      string
	nodes         int
	rates         []float64 // connects/s per repeat, in repeat order
	rate, secs    Spread
	failed        int
	ratio         float64 // median / the reference's median
	ratioLo       float64 // per-repeat ratio against the same repeat's reference
	ratioHi       float64
	errors, notes []string
}

// summarizeStorms returns the stats per exchange and the reference: the
// faster exchange-less node (none-sync, none-async) none of whose storms
// failed a dial or erred, "" when there is none.
func summarizeStorms(exchanges []string, runs []*StormRun) ([]*stormStats, string) {
	by := map[string]*stormStats{}
	var out []*stormStats
	for _, ex := range exchanges {
		st := &stormStats{exchange: ex}
		by[ex] = st
		out = append(out, st)
	}
	var secs = map[string][]float64{}
	for _, run := range runs {
		st := by[run.Exchange]
		if st == nil {
			continue
		}
		if run.Error != "" {
			st.errors = append(st.errors, fmt.Sprintf("#%d: %s", run.Repeat, run.Error))
			continue
		}
		if run.Note != "" {
			st.notes = append(st.notes, fmt.Sprintf("#%d: %s", run.Repeat, run.Note))
		}
		st.nodes = run.Nodes
		st.rates = append(st.rates, run.PerSec)
		secs[run.Exchange] = append(secs[run.Exchange], run.Seconds)
		st.failed += run.Failed
	}
	var cands []refCandidate
	for _, st := range out {
		st.rate, st.secs = spreadOf(st.rates), spreadOf(secs[st.exchange])
		if isReference(st.exchange) {
			cands = append(cands, refCandidate{st.exchange, st.failed == 0 && len(st.errors) == 0, st.rate.Median})
		}
	}
	ref := pickReference(cands)
	if ref == "" {
		return out, ""
	}
	refAt := map[int]float64{}
	for _, run := range runs {
		if run.Exchange == ref {
			refAt[run.Repeat] = run.PerSec
		}
	}
	for _, st := range out {
		if st.rate.N == 0 {
			continue
		}
		st.ratio = st.rate.Median / by[ref].rate.Median
		first := true
		for _, run := range runs {
			nr, ok := refAt[run.Repeat]
			if run.Exchange != st.exchange || run.Error != "" || !ok || nr <= 0 {
				continue
			}
			q := run.PerSec / nr
			if first || q < st.ratioLo {
				st.ratioLo = q
			}
			if first || q > st.ratioHi {
				st.ratioHi = q
			}
			first = false
		}
	}
	return out, ref
}

func stormMarkdown(cfg config, runs []*StormRun) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	stats, ref := summarizeStorms(cfg.stormExchanges, runs)
	w("\n## Connect storm\n\n")
	w("- %d clients dial at once with %d concurrent dialers, each into namespace %q, spread round-robin over K=%d nodes (`none-*`: 1 node, no exchange); timed from the first dial to the last `Connect` returning (per-client broker subscriptions the engine makes in the background are not waited for); each dial bounded by 10s, no dial started after %v.\n",
		cfg.storm, cfg.stormDialers, nsBench, cfg.k, cfg.stormTimeout)
	refNote := "no exchange-less reference without failed dials ran: no ratios"
	if ref != "" {
		refNote = fmt.Sprintf("the reference is `%s` (the faster exchange-less node whose storms all connected)", ref)
	}
	w("- %d interleaved repeats (%s, then again), each on a fresh cluster and a fresh broker; medians over the repeats, spread min-max. `vs none` is the median against the reference's median; `paired` is the range of each repeat's ratio against the reference in the same repeat; %s.\n\n",
		cfg.repeat, strings.Join(cfg.stormExchanges, ", "), refNote)
	w("| exchange | nodes | connects/s median | min-max | vs none | paired vs none min-max | seconds median | failed | runs (connects/s, in repeat order) |\n")
	w("|---|---|---|---|---|---|---|---|---|\n")
	for _, st := range stats {
		if st.rate.N == 0 {
			w("| %s | - | - | - | - | - | - | - | %s |\n", st.exchange, strings.Join(st.errors, "; "))
			continue
		}
		vs, paired := "-", "-"
		if st.ratio > 0 {
			vs = fmt.Sprintf("%.2fx", st.ratio)
			paired = fmt.Sprintf("%.2fx-%.2fx", st.ratioLo, st.ratioHi)
		}
		if st.exchange == ref {
			vs += " (ref)"
		}
		each := make([]string, len(st.rates))
		for i, v := range st.rates {
			each[i] = f0(v)
		}
		w("| %s | %d | %s | %s-%s | %s | %s | %s | %d | %s |\n", st.exchange, st.nodes, f0(st.rate.Median), f0(st.rate.Min), f0(st.rate.Max),
			vs, paired, f2(st.secs.Median), st.failed, strings.Join(each, ", "))
	}
	for _, st := range stats {
		for _, e := range st.errors {
			w("\n- %s storm %s\n", st.exchange, e)
		}
		for _, n := range st.notes {
			w("\n- %s storm %s\n", st.exchange, n)
		}
	}
	return b.String()
}

// raiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit, and
// fails when that is below need (both ends of every websocket live in this
// process).
func raiseFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raise the open-file limit to %d: %w", lim.Max, err)
		}
	}
	if lim.Cur < need {
		return fmt.Errorf("open-file limit %d, the storm needs about %d: raise it (ulimit -n %d, as root) or lower -storm", lim.Cur, need, need)
	}
	return nil
}
