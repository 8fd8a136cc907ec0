package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, v, _ := strings.Cut(l, ":")
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	var mem string
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		l, _, _ := strings.Cut(string(b), "\n")
		mem = strings.Join(strings.Fields(l)[1:], " ")
	}
	return fmt.Sprintf("%s, %d cores, MemTotal %s, %s/%s", cpu, runtime.NumCPU(), mem, runtime.GOOS, runtime.GOARCH)
}

func version(bin string, args ...string) string {
	out, err := exec.Command(lookBin(bin), args...).Output()
	if err != nil {
		return bin + ": not found"
	}
	s := strings.TrimSpace(string(out))
	if i := strings.Index(s, " sha="); i > 0 {
		s = s[:i]
	}
	return s
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func f0(v float64) string { return fmt.Sprintf("%.0f", v) }
func f1(v float64) string { return fmt.Sprintf("%.1f", v) }
func f2(v float64) string { return fmt.Sprintf("%.2f", v) }

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func f3(v float64) string { return fmt.Sprintf("%.3f", v) }

// Summary is one exchange at one client count over all its repeats: one
// line of results.jsonl. Numbers are medians with their spread; losses are
// sums over the repeats; ratios are of medians against the reference.
type Summary struct {
	Exchange string `json:"exchange"`
	Clients  int    `json:"clients"`
	Nodes    int    `json:"nodes"`
	Messages int    `json:"messages"` // of each burst
	Repeats  int    `json:"repeats"`  // runs, with or without error
	// Reference is the exchange the ratios at this client count are taken
	// against: the faster of none-sync and none-async that lost nothing
	// ("" when both lost something).
	Reference string `json:"reference"`
	// Lossless: every delivery scenario (broadcast, paced, room, To,
	// Exclude) of every repeat delivered each expected message exactly
	// once, nothing else, in per-publisher order; every client connected;
	// no run erred.
	Lossless bool `json:"lossless"`

	Broadcast         Spread `json:"broadcast_per_sec"`
	BroadcastSeconds  Spread `json:"broadcast_seconds"`
	BroadcastExpected int64  `json:"broadcast_expected"` // deliveries, over all repeats
	BroadcastLost     int64  `json:"broadcast_lost"`     // expected and never received, over all repeats
	OrderViolations   int64  `json:"broadcast_order_violations"`
	Room              Spread `json:"room_per_sec"` // repeat 1 only
	PacedP50ms        Spread `json:"paced_p50_ms"`
	PacedP99ms        Spread `json:"paced_p99_ms"`
	AskP50ms          Spread `json:"ask_p50_ms"` // runs where some Ask returned
	AskP99ms          Spread `json:"ask_p99_ms"`
	Connects          Spread `json:"connects_per_sec"`

	BrokerConnsPerNode  Spread `json:"broker_conns_per_node"`
	BrokerSubsPerNode   Spread `json:"broker_subs_per_node"`
	GoroutinesPerClient Spread `json:"goroutines_per_client"`
	HeapPerClientKB     Spread `json:"heap_per_client_kb"`
	GoroutinesAfter     Spread `json:"goroutines_left_after_leave"`
	HeapAfterKB         Spread `json:"heap_left_after_leave_kb"`
	BrokerConnsAfter    Spread `json:"broker_conns_per_node_after_leave"`

	VsReference *Ratios `json:"vs_reference,omitempty"`

	Runs []*Result `json:"runs"` // in repeat order
}

// Ratios are medians over the reference's medians at the same client count.
type Ratios struct {
	Broadcast float64 `json:"broadcast_per_sec"`
	PacedP99  float64 `json:"paced_p99_ms"`
	Connects  float64 `json:"connects_per_sec"`
	Heap      float64 `json:"heap_per_client_kb"`
}

// deliveryScenarios are those where each expected message must arrive
// exactly once and in per-publisher order.
var deliveryScenarios = []string{"broadcast", "paced", "room", "to", "exclude-conn", "exclude-id-own", "exclude-id-other"}

// merged sums one scenario over the runs that ran it: counts add up, OK
// only when every run passed.
func merged(runs []*Result, name string) Scenario {
	m := Scenario{Name: name, OK: true}
	ran := 0
	for _, r := range runs {
		s := r.scenario(name)
		if s.Note == "not run" {
			continue
		}
		ran++
		m.Messages = s.Messages
		m.Expected += s.Expected
		m.Delivered += s.Delivered
		m.Missing += s.Missing
		m.Dups += s.Dups
		m.Wrong += s.Wrong
		m.Order += s.Order
		m.OK = m.OK && s.OK
		if m.Note == "" {
			m.Note = s.Note
		}
	}
	if ran == 0 {
		return Scenario{Name: name, Note: "not run"}
	}
	return m
}

func spreadOver(runs []*Result, f func(*Result) (float64, bool)) Spread {
	var v []float64
	for _, r := range runs {
		if x, ok := f(r); ok {
			v = append(v, x)
		}
	}
	return spreadOf(v)
}

// summarize groups the runs by client count and exchange (in cfg order),
// and picks each client count's reference.
func summarize(cfg config, results []*Result) []*Summary {
	var out []*Summary
	for _, n := range cfg.ns {
		var at []*Summary
		for _, ex := range cfg.exchanges {
			var runs []*Result
			for _, r := range results {
				if r.Exchange == ex && r.Clients == n {
					runs = append(runs, r)
				}
			}
			if len(runs) > 0 {
				at = append(at, summarizeRuns(runs))
			}
		}
		var cands []refCandidate
		for _, s := range at {
			if isReference(s.Exchange) {
				cands = append(cands, refCandidate{s.Exchange, s.Lossless, s.Broadcast.Median})
			}
		}
		refName := pickReference(cands)
		var ref *Summary
		for _, s := range at {
			s.Reference = refName
			if s.Exchange == refName {
				ref = s
			}
		}
		if ref != nil {
			q := func(a, b Spread) float64 {
				if a.N == 0 || b.N == 0 || b.Median <= 0 {
					return 0
				}
				return a.Median / b.Median
			}
			for _, s := range at {
				s.VsReference = &Ratios{
					Broadcast: q(s.Broadcast, ref.Broadcast),
					PacedP99:  q(s.PacedP99ms, ref.PacedP99ms),
					Connects:  q(s.Connects, ref.Connects),
					Heap:      q(s.HeapPerClientKB, ref.HeapPerClientKB),
				}
			}
		}
		out = append(out, at...)
	}
	return out
}

func summarizeRuns(runs []*Result) *Summary {
	r0 := runs[0]
	s := &Summary{Exchange: r0.Exchange, Clients: r0.Clients, Messages: r0.Messages, Repeats: len(runs), Runs: runs, Lossless: true}
	for _, r := range runs {
		s.Nodes = max(s.Nodes, r.Nodes)
		if r.Error != "" || r.scenario("connect").Missing > 0 {
			s.Lossless = false
		}
	}
	for _, name := range deliveryScenarios {
		m := merged(runs, name)
		if m.Note != "not run" && (m.Missing > 0 || m.Dups > 0 || m.Wrong > 0 || m.Order > 0 || m.Expected == 0) {
			s.Lossless = false
		}
	}
	if merged(runs, "broadcast").Note == "not run" {
		s.Lossless = false
	}
	bc := merged(runs, "broadcast")
	s.BroadcastExpected, s.BroadcastLost, s.OrderViolations = bc.Expected, bc.Missing, bc.Order
	ok := func(r *Result) bool { return r.Error == "" }
	sc := func(name string, f func(Scenario) float64) Spread {
		return spreadOver(runs, func(r *Result) (float64, bool) {
			x := r.scenario(name)
			v := f(x)
			return v, x.Note != "not run" && v > 0
		})
	}
	s.Broadcast = sc("broadcast", func(x Scenario) float64 { return x.PerSec })
	s.BroadcastSeconds = sc("broadcast", func(x Scenario) float64 { return x.Seconds })
	s.Room = sc("room", func(x Scenario) float64 { return x.PerSec })
	s.PacedP50ms = sc("paced", func(x Scenario) float64 { return x.P50ms })
	s.PacedP99ms = sc("paced", func(x Scenario) float64 { return x.P99ms })
	s.AskP50ms = sc("ask", func(x Scenario) float64 { return x.P50ms })
	s.AskP99ms = sc("ask", func(x Scenario) float64 { return x.P99ms })
	s.Connects = sc("connect", func(x Scenario) float64 { return x.PerSec })
	res := func(f func(*Result) float64) Spread {
		return spreadOver(runs, func(r *Result) (float64, bool) { return f(r), ok(r) })
	}
	s.BrokerConnsPerNode = res(func(r *Result) float64 { return r.BrokerConnsPerNode })
	s.BrokerSubsPerNode = res(func(r *Result) float64 { return r.BrokerSubsPerNode })
	s.GoroutinesPerClient = res(func(r *Result) float64 { return r.GoroutinesPerClient })
	s.HeapPerClientKB = res(func(r *Result) float64 { return r.HeapPerClientKB })
	s.GoroutinesAfter = res(func(r *Result) float64 { return float64(r.GoroutinesAfter) })
	s.HeapAfterKB = res(func(r *Result) float64 { return r.HeapAfterKB })
	s.BrokerConnsAfter = res(func(r *Result) float64 { return r.BrokerConnsAfter })
	return s
}

func findSummary(sums []*Summary, ex string, n int) *Summary {
	for _, s := range sums {
		if s.Exchange == ex && s.Clients == n {
			return s
		}
	}
	return nil
}

// vs formats a ratio against the reference ("-" without one).
func vs(s *Summary, f func(*Ratios) float64) string {
	if s.VsReference == nil || f(s.VsReference) <= 0 {
		return "-"
	}
	v := fmt.Sprintf("%.2fx", f(s.VsReference))
	if s.Exchange == s.Reference {
		v += " (ref)"
	}
	return v
}

func markdown(cfg config, sums []*Summary, total time.Duration) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# scaleout benchmark\n\n")
	w("- run: %s, %v in all; neffos %s, %s", time.Now().UTC().Format("2006-01-02 15:04 UTC"), total.Round(time.Second), neffosVersion(), runtime.Version())
	if cfg.label != "" {
		w("; %s", cfg.label)
	}
	w("\n- machine: %s; GOMAXPROCS %d; everything (nodes, clients, brokers) on this one machine\n", machine(), runtime.GOMAXPROCS(0))
	w("- brokers (own processes, fresh per run, on free loopback ports): %s; %s\n", version("redis-server", "--version"), version("nats-server", "--version"))
	w("- command: `cd _benchmarks && go run . %s`\n", strings.Join(os.Args[1:], " "))
	w("- load average at the end of the run (other processes on this machine): %s\n", loadavg())
	if len(sums) == 0 {
		return b.String() // the storm only (stormMarkdown)
	}
	var lens []string
	for _, n := range cfg.ns {
		lens = append(lens, fmt.Sprintf("%d at N=%d", cfg.messagesAt(n), n))
	}
	burst := "-messages " + fmt.Sprint(cfg.messages)
	if cfg.messages == 0 {
		burst = fmt.Sprintf("ceil(%d/N) messages (-burst-deliveries)", cfg.burstDeliveries)
	}
	w("- K=%d nodes (`none-*`: 1 node, no exchange), clients spread round-robin; burst and room: %s: %s; paced: %d messages at max(1, %d/N) per second; To: min(messages, 50); Ask: %d (each bounded by %v); churn: %d fresh clients\n",
		cfg.k, burst, strings.Join(lens, ", "), cfg.paced, cfg.load, cfg.asks, cfg.askTimeout, cfg.churn)
	w("- repeats: %d, interleaved (%s, then again), each run on a fresh cluster and fresh broker. Cells give the median over the repeats and, in brackets, min-max. Connect, burst, paced, Ask and memory run in every repeat; room, To, Exclude and churn (correctness checks) in the first only. An exchange whose Ask never returned is not asked again in later repeats.\n",
		cfg.repeat, strings.Join(cfg.exchanges, ", "))
	w("- references: `none-sync` is one node with no exchange and `Server.SyncBroadcaster = true`; `none-async` the same node with neffos's default broadcaster. At each N, every `vs none` ratio is the exchange's median over the median of the faster reference (burst deliveries/s) that lost nothing (every expected delivery of every delivery scenario exactly once and in per-publisher order, in every repeat); that row reads `(ref)`. Deliveries/s counts each expected (client, message) pair once, from the first send to the last delivery.\n")
	w("- burst order: each body carries (publishing node, sequence); each client counts the messages that arrive after a later one of the same publisher (order violations, must be 0).\n")
	for _, n := range cfg.ns {
		var line []string
		refName := ""
		for _, s := range sums {
			if s.Clients != n {
				continue
			}
			refName = s.Reference
			if isReference(s.Exchange) {
				line = append(line, fmt.Sprintf("`%s` burst %s deliveries/s, lost %d of %d deliveries, %d out of order, lossless: %v",
					s.Exchange, s.Broadcast.format(f0), s.BroadcastLost, s.BroadcastExpected, s.OrderViolations, s.Lossless))
			}
		}
		switch {
		case refName != "":
			w("- N=%d: reference `%s`", n, refName)
		case len(line) > 0:
			w("- N=%d: no reference (both lost deliveries): no ratios", n)
		default:
			w("- N=%d: no reference ran: no ratios", n)
		}
		if len(line) > 0 {
			w(" (%s)", strings.Join(line, "; "))
		}
		w("\n")
		var short []string
		for _, s := range sums {
			if s.Clients == n && s.BroadcastLost == 0 && s.BroadcastSeconds.N > 0 && s.BroadcastSeconds.Min < 1 {
				short = append(short, fmt.Sprintf("%s %.2fs", s.Exchange, s.BroadcastSeconds.Min))
			}
		}
		if len(short) > 0 {
			w("- N=%d: bursts shorter than 1 s (shortest repeat): %s; such rates swing, raise -burst-deliveries or -messages\n", n, strings.Join(short, ", "))
		}
	}

	w("\n## Throughput and latency\n\n")
	w("| N | exchange | broadcast deliveries/s | vs none | burst s | burst lost | order violations | paced p50 ms | paced p99 ms | p99 vs none | room deliveries/s | Ask p50 ms | Ask p99 ms | connects/s | vs none |\n")
	w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range sums {
		askP50, askP99 := "fails", "fails"
		if s.AskP50ms.N > 0 {
			askP50, askP99 = s.AskP50ms.format(f3), s.AskP99ms.format(f3)
		}
		w("| %d | %s | %s | %s | %s | %d of %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Clients, s.Exchange,
			s.Broadcast.format(f0), vs(s, func(q *Ratios) float64 { return q.Broadcast }),
			s.BroadcastSeconds.format(f2), s.BroadcastLost, s.BroadcastExpected, s.OrderViolations,
			s.PacedP50ms.format(f2), s.PacedP99ms.format(f2), vs(s, func(q *Ratios) float64 { return q.PacedP99 }),
			s.Room.format(f0), askP50, askP99, s.Connects.format(f0), vs(s, func(q *Ratios) float64 { return q.Connects }))
	}

	w("\n## Correctness (each expected delivery exactly once, in per-publisher order, nothing where it must not be; counts summed over the runs of each scenario)\n\n")
	w("| N | exchange | connect | broadcast | paced | room | To | Exclude(*Conn) own node | Exclude(id) own node | Exclude(id) other node | Ask other node | churn misses |\n")
	w("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range sums {
		ch := merged(s.Runs, "churn")
		churn := fmt.Sprintf("%d of %d", ch.Missing, ch.Expected)
		if ch.Dups > 0 {
			churn += fmt.Sprintf(", %d dup", ch.Dups)
		}
		ask := merged(s.Runs, "ask")
		askV := ask.verdict()
		if !ask.OK && ask.Delivered == 0 {
			askV = "fails: never returns"
		} else if !ask.OK {
			askV = fmt.Sprintf("%d of %d failed", ask.Missing, ask.Expected)
		}
		w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Clients, s.Exchange,
			merged(s.Runs, "connect").verdict(), merged(s.Runs, "broadcast").verdict(), merged(s.Runs, "paced").verdict(),
			merged(s.Runs, "room").verdict(), merged(s.Runs, "to").verdict(), merged(s.Runs, "exclude-conn").verdict(),
			merged(s.Runs, "exclude-id-own").verdict(), merged(s.Runs, "exclude-id-other").verdict(), askV, churn)
	}

	w("\n## Resources (medians over the repeats)\n\n")
	w("| N | exchange | broker conns/node | broker subs/node | goroutines/client | heap KB/client | heap vs none | after all left: goroutines | heap KB | broker conns/node |\n")
	w("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range sums {
		w("| %d | %s | %s | %s | %s | %s | %s | %+.0f | %+.0f | %s |\n", s.Clients, s.Exchange,
			f1(s.BrokerConnsPerNode.Median), f1(s.BrokerSubsPerNode.Median), f2(s.GoroutinesPerClient.Median), s.HeapPerClientKB.format(f1),
			vs(s, func(q *Ratios) float64 { return q.Heap }), s.GoroutinesAfter.Median, s.HeapAfterKB.Median, f1(s.BrokerConnsAfter.Median))
	}
	for _, s := range sums {
		for _, r := range s.Runs {
			if r.Error != "" {
				w("\n- %s N=%d #%d: error: %s\n", r.Exchange, r.Clients, r.Repeat, r.Error)
			}
		}
	}

	w("\n## Targets, ours against the same run (medians; `none` is each N's reference)\n\n")
	w("| N | exchange | target | measured | met |\n|---|---|---|---|---|\n")
	for _, n := range cfg.ns {
		for _, ex := range []string{"redis", "nats"} {
			s := findSummary(sums, ex, n)
			if s == nil {
				continue
			}
			row := func(target, measured string, ok bool) {
				m := "no"
				if ok {
					m = "yes"
				}
				w("| %d | %s | %s | %s | %s |\n", n, ex, target, measured, m)
			}
			bc := s.Broadcast.Median
			if ref := findSummary(sums, s.Reference, n); ref != nil && s.VsReference != nil {
				q := s.VsReference
				row("broadcast deliveries/s >= 0.8x none", fmt.Sprintf("%.2fx (vs %s)", q.Broadcast, ref.Exchange), q.Broadcast >= 0.8)
				row("paced p99 <= 1.3x none", fmt.Sprintf("%.2f ms vs %.2f ms (%.2fx)", s.PacedP99ms.Median, ref.PacedP99ms.Median, q.PacedP99), q.PacedP99 > 0 && q.PacedP99 <= 1.3)
				row("connects/s >= 0.9x none", fmt.Sprintf("%.2fx", q.Connects), q.Connects >= 0.9)
				row("heap per client <= 1.1x none", fmt.Sprintf("%.1f KB vs %.1f KB (%.2fx)", s.HeapPerClientKB.Median, ref.HeapPerClientKB.Median, q.Heap), q.Heap <= 1.1)
			} else {
				row("against none", "no lossless reference at this N", false)
			}
			want := map[string]float64{"redis": 5, "nats": 1.2}[ex]
			if bi := findSummary(sums, ex+"-builtin", n); bi != nil {
				bb := bi.Broadcast.Median
				row(fmt.Sprintf("broadcast deliveries/s >= %.1fx %s-builtin", want, ex), ratio(bc, bb), bb > 0 && bc >= want*bb)
			}
			ak := merged(s.Runs, "ask")
			row("Ask p50 <= 0.5 ms", fmt.Sprintf("%.3f ms (%d/%d ok)", s.AskP50ms.Median, ak.Delivered, ak.Expected), ak.OK && s.AskP50ms.N > 0 && s.AskP50ms.Median <= 0.5)
			if bi := findSummary(sums, ex+"-builtin", n); bi != nil {
				if bi.AskP50ms.N > 0 {
					row("Ask p50 <= built-in's", fmt.Sprintf("%.3f ms vs %.3f ms", s.AskP50ms.Median, bi.AskP50ms.Median), ak.OK && s.AskP50ms.Median <= bi.AskP50ms.Median)
				} else {
					row("Ask p50 <= built-in's", "built-in never returns", ak.OK)
				}
			}
			row("broker connections per node <= 3", f1(s.BrokerConnsPerNode.Median), s.BrokerConnsPerNode.Max <= 3)
			xo := merged(s.Runs, "exclude-id-other")
			row("Exclude(id) from another node passes", xo.verdict(), xo.OK)
			row("burst in per-publisher order", fmt.Sprintf("%d violations", s.OrderViolations), s.OrderViolations == 0 && s.BroadcastExpected > 0)
			ch := merged(s.Runs, "churn")
			row("fresh-client misses 0 of "+fmt.Sprint(ch.Expected), fmt.Sprintf("%d", ch.Missing), ch.Missing == 0 && ch.Dups == 0 && ch.Expected > 0)
		}
	}
	w("\n![median deliveries/s and broker connections per node against client count](plot.png)\n")
	return b.String()
}
