// Command benchmarks compares neffos StackExchanges in one run: no exchange
// (one node, the references: none-sync on Server.SyncBroadcaster and
// none-async on neffos's default broadcaster), neffos's built-in
// stackexchange/redis and stackexchange/nats, and this module's redis and
// nats exchanges (and, optionally, the in-process MemoryBroker).
//
// One process starts K neffos nodes on loopback, each with its own
// exchange instance, its own redis-server / nats-server processes on free
// loopback ports (one fresh broker per exchange and client count, stopped by
// PID at the end), and N real neffos Go clients spread over the nodes. Each
// scenario has a correctness verdict and numbers. Every configuration runs
// -repeat (3) times, interleaved across the exchanges, each time fresh
// (repeat.go); the report gives medians with their spread, and ratios of
// medians against the faster reference that lost nothing. It writes
// results.md, results.jsonl (one line per exchange and client count, the
// runs inside) and plot.png to -out. `go run . -replot results` draws
// results/plot.png again from results/results.jsonl without running anything.
//
// The burst broadcast sends -messages messages, by default
// ceil(-burst-deliveries / N), so that each burst is long enough (over a
// second for the references) not to swing with the machine's moods.
//
//	cd _benchmarks && go run . [-n 300,1000] [-k 3] [-repeat 3] [-burst-deliveries 400000 | -messages M] [-exchanges none-sync,none-async,redis-builtin,nats-builtin,redis,nats]
//
// Then the connect storm (storm.go): -storm clients (6000) dial at once
// with -storm-dialers (64) into K nodes, for each of -storm-exchanges
// (none-sync,redis,nats), -repeat (3) interleaved times; -storm 0 skips it,
// -storm-only runs nothing else:
//
//	cd _benchmarks && go run . -storm-only -storm 6000 -storm-dialers 64 -repeat 3 -out results/storm
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	k               int
	ns              []int
	messages        int // 0: ceil(burstDeliveries / N)
	burstDeliveries int
	paced           int
	load            int
	asks            int
	askTimeout      time.Duration
	churn           int
	churnWait       time.Duration
	dialers         int
	// connectTimeout bounds the connect scenario: no dial starts later.
	connectTimeout time.Duration
	// The connect storm (storm.go); storm 0 skips it.
	storm          int
	stormDialers   int
	stormTimeout   time.Duration
	stormExchanges []string
	stormOnly      bool
	repeat         int
	timeout        time.Duration
	grace          time.Duration
	idle           time.Duration
	exchanges      []string
	out            string
	cpuprofile     string
	label          string
}

type runner struct {
	cfg      config
	procs    []*proc
	messages int // of the burst, room and To scenarios at the current N

	// askDead holds exchange/N whose Ask never returned in an earlier
	// repeat: later repeats do not wait for it again.
	askDead map[string]bool
}

// messagesAt is the burst length at n clients.
func (c config) messagesAt(n int) int {
	if c.messages > 0 {
		return c.messages
	}
	return (c.burstDeliveries + n - 1) / n
}

// Result is one run (repeat) of one exchange at one client count; the
// runs of each exchange and count are in its Summary (results.jsonl).
type Result struct {
	Neffos    string `json:"neffos"`
	Go        string `json:"go"`
	Exchange  string `json:"exchange"`
	Repeat    int    `json:"repeat"` // 1-based
	Nodes     int    `json:"nodes"`
	Clients   int    `json:"clients"`
	Messages  int    `json:"messages"`
	Connected int    `json:"connected"`

	Scenarios []Scenario `json:"scenarios"`

	BrokerConnsPerNode float64 `json:"broker_conns_per_node"`
	BrokerSubsPerNode  float64 `json:"broker_subs_per_node"`
	InspectorConns     int     `json:"inspector_conns,omitempty"` // ours: BrokerConns summed over all nodes
	BrokerConnsAfter   float64 `json:"broker_conns_per_node_after_leave"`

	GoroutinesPerClient float64 `json:"goroutines_per_client"`
	HeapPerClientKB     float64 `json:"heap_per_client_kb"`
	GoroutinesAfter     int     `json:"goroutines_left_after_leave"` // vs before the clients came
	HeapAfterKB         float64 `json:"heap_left_after_leave_kb"`

	Error   string  `json:"error,omitempty"`
	Seconds float64 `json:"seconds"`
}

func (r *Result) scenario(name string) Scenario {
	for _, s := range r.Scenarios {
		if s.Name == name {
			return s
		}
	}
	return Scenario{Name: name, Note: "not run"}
}

func main() {
	var cfg config
	var ns, exch, stormExch string
	flag.IntVar(&cfg.k, "k", 3, "neffos nodes per exchange (none-sync and none-async always use 1)")
	flag.StringVar(&ns, "n", "300,1000", "comma-separated client counts")
	flag.IntVar(&cfg.messages, "messages", 0, "messages of the burst broadcast and room scenarios (0: ceil(-burst-deliveries / N))")
	flag.IntVar(&cfg.burstDeliveries, "burst-deliveries", 400000, "with -messages 0: deliveries per burst (messages x N), so each burst lasts more than a second")
	flag.IntVar(&cfg.paced, "paced", 50, "messages of the paced broadcast")
	flag.IntVar(&cfg.load, "paced-load", 10000, "paced broadcast load in deliveries per second: messages go out at max(1, load/N) per second, below every exchange's capacity, so latency is not queueing")
	flag.IntVar(&cfg.asks, "asks", 200, "Server.Ask calls")
	flag.DurationVar(&cfg.askTimeout, "ask-timeout", time.Second, "bound of each Server.Ask")
	flag.IntVar(&cfg.churn, "churn", 500, "fresh clients of the churn scenario")
	flag.DurationVar(&cfg.churnWait, "churn-wait", 300*time.Millisecond, "how long a fresh client waits for its broadcast")
	flag.IntVar(&cfg.dialers, "dialers", 16, "concurrent dialers of the connect scenario")
	flag.DurationVar(&cfg.connectTimeout, "connect-timeout", 5*time.Minute, "bound of the connect scenario: no dial starts later")
	flag.IntVar(&cfg.storm, "storm", 6000, "clients of the connect storm (0: no storm)")
	flag.IntVar(&cfg.stormDialers, "storm-dialers", 64, "concurrent dialers of the connect storm")
	flag.DurationVar(&cfg.stormTimeout, "storm-timeout", 3*time.Minute, "bound of each connect storm: no dial starts later")
	flag.StringVar(&stormExch, "storm-exchanges", "none-sync,redis,nats", "comma-separated exchanges of the connect storm, run in this order in every repeat")
	flag.IntVar(&cfg.repeat, "repeat", 3, "interleaved repeats of every configuration (the scenarios at each -n, and the connect storm); the report gives medians")
	flag.BoolVar(&cfg.stormOnly, "storm-only", false, "run the connect storm only, not the scenarios at -n")
	flag.DurationVar(&cfg.timeout, "timeout", 60*time.Second, "bound of each delivery scenario's wait after its last send (a slow but progressing burst of -burst-deliveries on a built-in exchange takes 10-20 s)")
	flag.DurationVar(&cfg.idle, "idle", 3*time.Second, "a delivery scenario stops waiting when nothing arrived for this long")
	flag.DurationVar(&cfg.grace, "grace", 200*time.Millisecond, "wait after the last expected delivery, for late and duplicate ones")
	flag.StringVar(&exch, "exchanges", strings.Join(defaultExchanges, ","), "comma-separated, run in this order in every repeat: "+strings.Join(allExchanges, ",")+` ("none" is none-sync)`)
	flag.StringVar(&cfg.out, "out", "results", "output directory")
	flag.StringVar(&cfg.cpuprofile, "cpuprofile", "", "directory for one CPU profile per exchange and client count (cpu-<exchange>-<n>-r<repeat>.pprof) and per storm (cpu-storm-<exchange>-r<repeat>.pprof)")
	flag.StringVar(&cfg.label, "label", "", "free text for the report header (the machine)")
	replotDir := flag.String("replot", "", "only draw `dir`/plot.png again from dir/results.jsonl (no benchmark runs)")
	flag.Parse()

	if *replotDir != "" {
		if err := replot(*replotDir); err != nil {
			fatalf("replot: %v", err)
		}
		logf("wrote %s", filepath.Join(*replotDir, "plot.png"))
		return
	}

	for _, s := range strings.Split(ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 4 {
			fatalf("bad -n %q (each count >= 4)", s)
		}
		cfg.ns = append(cfg.ns, n)
	}
	cfg.exchanges = parseExchanges("-exchanges", exch)
	cfg.stormExchanges = parseExchanges("-storm-exchanges", stormExch)
	if cfg.repeat < 1 {
		fatalf("need -repeat >= 1")
	}
	if cfg.storm < 0 || cfg.storm > 0 && (cfg.stormDialers < 1 || cfg.stormTimeout <= 0) {
		fatalf("need -storm >= 0, and with a storm positive -storm-dialers, -storm-timeout")
	}
	if cfg.stormOnly && cfg.storm == 0 {
		fatalf("-storm-only needs -storm > 0")
	}
	if cfg.storm > 0 {
		// Both ends of every websocket are in this process, and neffos's
		// built-in redis exchange holds a Redis connection per client.
		perClient := uint64(2)
		for _, ex := range cfg.stormExchanges {
			if ex == "redis-builtin" || ex == "nats-builtin" {
				perClient = 3
			}
		}
		if err := raiseFileLimit(perClient*uint64(cfg.storm) + 1024); err != nil {
			fatalf("%v", err)
		}
	}
	if cfg.k < 2 || cfg.messages < 0 || cfg.burstDeliveries < 1 || cfg.paced < 1 || cfg.load < 1 || cfg.dialers < 1 || cfg.asks < 1 {
		fatalf("need -k >= 2, -messages >= 0 and positive -burst-deliveries, -paced, -paced-load, -dialers, -asks")
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		fatalf("%v", err)
	}
	if cfg.cpuprofile != "" {
		if err := os.MkdirAll(cfg.cpuprofile, 0o755); err != nil {
			fatalf("%v", err)
		}
	}

	r := &runner{cfg: cfg, askDead: map[string]bool{}}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		r.stopBrokers()
		os.Exit(130)
	}()

	t0 := time.Now()
	var results []*Result
	for _, n := range cfg.ns {
		if cfg.stormOnly {
			break
		}
		interleave(cfg.repeat, cfg.exchanges, func(rep int, ex string) {
			res := r.runOne(ex, n, rep)
			results = append(results, res)
			logf("%-13s N=%-5d #%d done in %.1fs %s", ex, n, rep, res.Seconds, res.Error)
		})
	}
	var storms []*StormRun
	if cfg.storm > 0 {
		storms = r.runStorms()
	}
	r.stopBrokers()
	total := time.Since(t0)

	var wrote []string
	sums := summarize(cfg, results)
	if len(results) > 0 {
		if err := writeJSONL(filepath.Join(cfg.out, "results.jsonl"), sums); err != nil {
			fatalf("%v", err)
		}
		if err := plotResults(filepath.Join(cfg.out, "plot.png"), cfg, sums); err != nil {
			fatalf("plot: %v", err)
		}
		wrote = append(wrote, "results.jsonl", "plot.png")
	}
	if len(storms) > 0 {
		if err := writeJSONL(filepath.Join(cfg.out, "storm.jsonl"), storms); err != nil {
			fatalf("%v", err)
		}
		wrote = append(wrote, "storm.jsonl")
	}
	md := markdown(cfg, sums, total)
	if len(storms) > 0 {
		md += stormMarkdown(cfg, storms)
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "results.md"), []byte(md), 0o644); err != nil {
		fatalf("%v", err)
	}
	fmt.Print(md)
	logf("wrote %s/{results.md,%s} in %v", cfg.out, strings.Join(wrote, ","), total.Round(time.Second))
}

func (r *runner) stopBrokers() {
	for _, p := range r.procs {
		p.stop()
	}
	r.procs = nil
}

func parseExchanges(flagName, list string) []string {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if a, ok := exchangeAlias[s]; ok {
			s = a
		}
		if !slices.Contains(allExchanges, s) {
			fatalf("%s: unknown exchange %q (known: %s)", flagName, s, strings.Join(allExchanges, ","))
		}
		if slices.Contains(out, s) {
			fatalf("%s: %q twice", flagName, s)
		}
		out = append(out, s)
	}
	return out
}

// runOne runs the scenarios for one exchange at n clients, on a fresh
// cluster and broker. Repeat 1 runs all of them; later repeats only those
// the report takes medians of (connect, burst, paced, Ask, memory): the
// others (room, To, Exclude, churn) are correctness checks.
func (r *runner) runOne(ex string, n, rep int) (res *Result) {
	start := time.Now()
	r.messages = r.cfg.messagesAt(n)
	res = &Result{Neffos: neffosVersion(), Go: runtime.Version(), Exchange: ex, Repeat: rep, Clients: n, Messages: r.messages}
	defer func() {
		if p := recover(); p != nil {
			res.Error = fmt.Sprintf("panic: %v", p)
		}
		res.Seconds = time.Since(start).Seconds()
	}()

	b, err := startBroker(ex)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	if b != nil {
		// Kept until the end of the run: neffos v0.0.24's exchanges cannot
		// be closed, and their leftovers would spin on a vanished broker.
		r.procs = append(r.procs, b)
	}

	defer r.profile(fmt.Sprintf("cpu-%s-%d-r%d.pprof", ex, n, rep))()

	cl, err := startCluster(ex, r.cfg.k, b)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.Nodes = len(cl.nodes)
	closed := false
	defer func() {
		if !closed {
			cl.close()
		}
	}()
	base := takeSnapshot()

	conn := r.connectAll(cl, n)
	res.Connected = int(conn.Delivered)
	if conn.Delivered < 4 {
		res.Error = "too few clients connected"
		res.Scenarios = append(res.Scenarios, conn)
		return res
	}
	if err := r.joinRoom(cl); err != nil {
		res.Error = err.Error()
	}
	cl.waitSubsStable(5 * time.Second) // per-client subscriptions are made in the background
	peak := takeSnapshot()
	res.GoroutinesPerClient = float64(peak.Goroutines-base.Goroutines) / float64(res.Connected)
	res.HeapPerClientKB = (float64(peak.Heap) - float64(base.Heap)) / 1024 / float64(res.Connected)
	if bc, err := cl.brokerCount(); err == nil {
		res.BrokerConnsPerNode = float64(bc.Conns) / float64(len(cl.nodes))
		res.BrokerSubsPerNode = float64(bc.Subs) / float64(len(cl.nodes))
	} else {
		res.Error = "broker count: " + err.Error()
	}
	if n, ok := cl.inspectorConns(); ok {
		res.InspectorConns = n
	}

	res.Scenarios = append(res.Scenarios, conn)
	scenarios := []func(*cluster) Scenario{r.broadcastBurst, r.broadcastPaced}
	if rep == 1 {
		scenarios = append(scenarios,
			r.roomBroadcast,
			r.to,
			func(cl *cluster) Scenario { return r.exclude(cl, "conn") },
			func(cl *cluster) Scenario { return r.exclude(cl, "id-own") },
			func(cl *cluster) Scenario { return r.exclude(cl, "id-other") },
		)
	}
	deadKey := fmt.Sprintf("%s/%d", ex, n)
	if r.askDead[deadKey] {
		res.Scenarios = append(res.Scenarios, Scenario{Name: "ask", Note: "never returned in an earlier repeat: not run again"})
	} else {
		scenarios = append(scenarios, func(cl *cluster) Scenario {
			s := r.ask(cl)
			if s.Delivered == 0 {
				r.askDead[deadKey] = true
			}
			return s
		})
	}
	if rep == 1 {
		scenarios = append(scenarios, r.churn)
	}
	for _, sc := range scenarios {
		s := sc(cl)
		logf("  %-13s N=%-5d %-17s %-28s %6.2fs %10.0f/s", ex, n, s.Name, s.verdict(), s.Seconds, s.PerSec)
		res.Scenarios = append(res.Scenarios, s)
	}

	// All clients leave: what is left?
	for _, c := range cl.clients {
		if c != nil {
			c.nc.Close()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for cl.serverConns() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cl.waitSubsStable(5 * time.Second) // background unsubscribes
	after := takeSnapshot()
	res.GoroutinesAfter = after.Goroutines - base.Goroutines
	res.HeapAfterKB = (float64(after.Heap) - float64(base.Heap)) / 1024
	if bc, err := cl.brokerCount(); err == nil {
		res.BrokerConnsAfter = float64(bc.Conns) / float64(len(cl.nodes))
	}
	cl.clients = nil
	cl.close()
	closed = true
	return res
}

func neffosVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/kataras/neffos" {
				return d.Version
			}
		}
	}
	return "unknown"
}

func writeJSONL[T any](path string, results []T) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(2)
}

// profile starts a CPU profile into file in the -cpuprofile directory and
// returns what stops it; without -cpuprofile (or when the file cannot be
// made) it does nothing.
func (r *runner) profile(file string) (stop func()) {
	if r.cfg.cpuprofile == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(r.cfg.cpuprofile, file))
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}
