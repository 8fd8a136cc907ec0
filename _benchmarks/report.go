package main

import (
	"fmt"
	"image/color"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
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

// ref returns the "none" result at the same client count.
func ref(results []*Result, n int) *Result {
	for _, r := range results {
		if r.Exchange == "none" && r.Clients == n {
			return r
		}
	}
	return nil
}

func find(results []*Result, ex string, n int) *Result {
	for _, r := range results {
		if r.Exchange == ex && r.Clients == n {
			return r
		}
	}
	return nil
}

func markdown(cfg config, results []*Result, total time.Duration) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# scaleout benchmark\n\n")
	w("- run: %s, %v in all; neffos %s, %s", time.Now().UTC().Format("2006-01-02 15:04 UTC"), total.Round(time.Second), neffosVersion(), runtime.Version())
	if cfg.label != "" {
		w("; %s", cfg.label)
	}
	w("\n- machine: %s; GOMAXPROCS %d; everything (nodes, clients, brokers) on this one machine\n", machine(), runtime.GOMAXPROCS(0))
	w("- brokers (own processes, fresh per row, on free loopback ports): %s; %s\n", version("redis-server", "--version"), version("nats-server", "--version"))
	w("- command: `cd _benchmarks && go run . %s`\n", strings.Join(os.Args[1:], " "))
	w("- load average at the end of the run (other processes on this machine): %s\n", loadavg())
	if len(results) == 0 {
		return b.String() // the storm only (stormMarkdown)
	}
	w("- K=%d nodes (`none`: 1 node, no exchange), clients spread round-robin; burst and room: %d messages; paced: %d messages at max(1, %d/N) per second; To: %d; Ask: %d (each bounded by %v); churn: %d fresh clients\n",
		cfg.k, cfg.messages, cfg.paced, cfg.load, min(cfg.messages, 50), cfg.asks, cfg.askTimeout, cfg.churn)
	w("- `none`: one node, no exchange, `Server.SyncBroadcaster = true`: every message reaches every client once, the reference. `none-async`: the same node with neffos's default async broadcaster, which coalesces broadcasts sent in quick succession (each connection's waiter reads only the latest batch) and so loses messages in a burst; shown for context, not used as the reference.\n")
	w("- ratios are taken against `none` at the same client count in this run; deliveries/s counts each expected (client, message) pair once, from the first send to the last delivery.\n\n")

	w("## Throughput and latency\n\n")
	w("| N | exchange | broadcast deliveries/s | vs none | paced p50 ms | paced p99 ms | p99 vs none | room deliveries/s | Ask p50 ms | Ask p99 ms | connects/s | vs none |\n")
	w("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		nr := ref(results, r.Clients)
		bc, pc, rm, ak, cn := r.scenario("broadcast"), r.scenario("paced"), r.scenario("room"), r.scenario("ask"), r.scenario("connect")
		var nb, np, ncn float64
		if nr != nil {
			nb, np, ncn = nr.scenario("broadcast").PerSec, nr.scenario("paced").P99ms, nr.scenario("connect").PerSec
		}
		askP50, askP99 := "fails", "fails"
		if ak.Delivered > 0 {
			askP50, askP99 = fmt.Sprintf("%.3f", ak.P50ms), fmt.Sprintf("%.3f", ak.P99ms)
		}
		w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Clients, r.Exchange,
			f0(bc.PerSec), ratio(bc.PerSec, nb), f2(pc.P50ms), f2(pc.P99ms), ratio(pc.P99ms, np),
			f0(rm.PerSec), askP50, askP99, f0(cn.PerSec), ratio(cn.PerSec, ncn))
	}

	w("\n## Correctness (each expected delivery exactly once, nothing where it must not be)\n\n")
	w("| N | exchange | connect | broadcast | paced | room | To | Exclude(*Conn) own node | Exclude(id) own node | Exclude(id) other node | Ask other node | churn misses |\n")
	w("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		ch := r.scenario("churn")
		churn := fmt.Sprintf("%d of %d", ch.Missing, ch.Expected)
		if ch.Dups > 0 {
			churn += fmt.Sprintf(", %d dup", ch.Dups)
		}
		ask := r.scenario("ask")
		askV := ask.verdict()
		if !ask.OK && ask.Delivered == 0 {
			askV = "fails: never returns"
		} else if !ask.OK {
			askV = fmt.Sprintf("%d of %d failed", ask.Missing, ask.Expected)
		}
		w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Clients, r.Exchange,
			r.scenario("connect").verdict(), r.scenario("broadcast").verdict(), r.scenario("paced").verdict(),
			r.scenario("room").verdict(), r.scenario("to").verdict(), r.scenario("exclude-conn").verdict(),
			r.scenario("exclude-id-own").verdict(), r.scenario("exclude-id-other").verdict(), askV, churn)
	}

	w("\n## Resources\n\n")
	w("| N | exchange | broker conns/node | broker subs/node | goroutines/client | heap KB/client | heap vs none | after all left: goroutines | heap KB | broker conns/node |\n")
	w("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		nr := ref(results, r.Clients)
		var nh float64
		if nr != nil {
			nh = nr.HeapPerClientKB
		}
		w("| %d | %s | %s | %s | %s | %s | %s | %+d | %+.0f | %s |\n", r.Clients, r.Exchange,
			f1(r.BrokerConnsPerNode), f1(r.BrokerSubsPerNode), f2(r.GoroutinesPerClient), f1(r.HeapPerClientKB), ratio(r.HeapPerClientKB, nh),
			r.GoroutinesAfter, r.HeapAfterKB, f1(r.BrokerConnsAfter))
	}
	for _, r := range results {
		if r.Error != "" {
			w("\n- %s N=%d: error: %s\n", r.Exchange, r.Clients, r.Error)
		}
	}

	w("\n## Targets (issue 5), ours against the same run\n\n")
	w("| N | exchange | target | measured | met |\n|---|---|---|---|---|\n")
	for _, n := range cfg.ns {
		nr := ref(results, n)
		for _, ex := range []string{"redis", "nats"} {
			r := find(results, ex, n)
			if r == nil {
				continue
			}
			row := func(target, measured string, ok bool) {
				m := "no"
				if ok {
					m = "yes"
				}
				w("| %d | %s | %s | %s | %s |\n", n, ex, target, measured, m)
			}
			bc := r.scenario("broadcast").PerSec
			if nr != nil {
				nb := nr.scenario("broadcast").PerSec
				m := ratio(bc, nb)
				if na := find(results, "none-async", n); na != nil {
					m += fmt.Sprintf(" (vs none-async, which loses messages: %s)", ratio(bc, na.scenario("broadcast").PerSec))
				}
				row("broadcast deliveries/s >= 0.8x none", m, nb > 0 && bc >= 0.8*nb)
				np := nr.scenario("paced").P99ms
				p := r.scenario("paced").P99ms
				row("paced p99 <= 1.3x none", fmt.Sprintf("%.2f ms vs %.2f ms (%s)", p, np, ratio(p, np)), np > 0 && p > 0 && p <= 1.3*np)
				nc := nr.scenario("connect").PerSec
				c := r.scenario("connect").PerSec
				row("connects/s >= 0.9x none", ratio(c, nc), nc > 0 && c >= 0.9*nc)
				row("heap per client <= 1.1x none", fmt.Sprintf("%.1f KB vs %.1f KB (%s)", r.HeapPerClientKB, nr.HeapPerClientKB, ratio(r.HeapPerClientKB, nr.HeapPerClientKB)), r.HeapPerClientKB <= 1.1*nr.HeapPerClientKB)
			}
			want := map[string]float64{"redis": 5, "nats": 1.2}[ex]
			if bi := find(results, ex+"-builtin", n); bi != nil {
				bb := bi.scenario("broadcast").PerSec
				row(fmt.Sprintf("broadcast deliveries/s >= %.1fx %s-builtin", want, ex), ratio(bc, bb), bb > 0 && bc >= want*bb)
			}
			ak := r.scenario("ask")
			row("Ask p50 <= 0.5 ms", fmt.Sprintf("%.3f ms (%d/%d ok)", ak.P50ms, ak.Delivered, ak.Expected), ak.OK && ak.P50ms <= 0.5)
			if bi := find(results, ex+"-builtin", n); bi != nil {
				ba := bi.scenario("ask")
				if ba.Delivered > 0 {
					row("Ask p50 <= built-in's", fmt.Sprintf("%.3f ms vs %.3f ms", ak.P50ms, ba.P50ms), ak.OK && ak.P50ms <= ba.P50ms)
				} else {
					row("Ask p50 <= built-in's", "built-in never returns", ak.OK)
				}
			}
			row("broker connections per node <= 3", f1(r.BrokerConnsPerNode), r.BrokerConnsPerNode <= 3)
			row("Exclude(id) from another node passes", r.scenario("exclude-id-other").verdict(), r.scenario("exclude-id-other").OK)
			ch := r.scenario("churn")
			row("fresh-client misses 0 of "+fmt.Sprint(ch.Expected), fmt.Sprintf("%d", ch.Missing), ch.Missing == 0 && ch.Dups == 0 && ch.Expected > 0)
		}
	}
	w("\n![deliveries/s and broker connections per node against client count](plot.png)\n")
	return b.String()
}

var palette = map[string]color.Color{
	"none":          color.RGBA{0, 0, 0, 255},
	"none-async":    color.RGBA{140, 140, 140, 255},
	"redis-builtin": color.RGBA{230, 120, 120, 255},
	"nats-builtin":  color.RGBA{120, 160, 230, 255},
	"redis":         color.RGBA{200, 0, 0, 255},
	"nats":          color.RGBA{0, 60, 200, 255},
	"memory":        color.RGBA{0, 150, 0, 255},
}

// plotResults draws deliveries/s and broker connections per node against
// the client count, one line per exchange, side by side in one PNG.
func plotResults(path string, cfg config, results []*Result) error {
	tput := plot.New()
	tput.Title.Text = fmt.Sprintf("broadcast deliveries/s (K=%d nodes, %d messages)", cfg.k, cfg.messages)
	tput.X.Label.Text = "clients"
	tput.Y.Label.Text = "deliveries/s"
	tput.Y.Min = 0
	conns := plot.New()
	conns.Title.Text = "broker connections per node"
	conns.X.Label.Text = "clients"
	conns.Y.Label.Text = "connections (log scale)"
	conns.Y.Scale = plot.LogScale{}
	conns.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	for _, p := range []*plot.Plot{tput, conns} {
		p.Legend.Top = true
		p.Add(plotter.NewGrid())
	}
	conns.Legend.Left = true
	for _, ex := range cfg.exchanges {
		var tp, cp plotter.XYs
		for _, n := range cfg.ns {
			r := find(results, ex, n)
			if r == nil {
				continue
			}
			tp = append(tp, plotter.XY{X: float64(n), Y: r.scenario("broadcast").PerSec})
			if r.BrokerConnsPerNode >= 1 {
				cp = append(cp, plotter.XY{X: float64(n), Y: r.BrokerConnsPerNode})
			}
		}
		add := func(p *plot.Plot, xys plotter.XYs) error {
			if len(xys) == 0 {
				return nil
			}
			l, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return err
			}
			c := palette[ex]
			l.Color, pts.Color = c, c
			l.Width = vg.Points(2)
			if strings.HasSuffix(ex, "-builtin") {
				l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			}
			p.Add(l, pts)
			p.Legend.Add(ex, l, pts)
			return nil
		}
		if err := add(tput, tp); err != nil {
			return err
		}
		if err := add(conns, cp); err != nil {
			return err
		}
	}
	img := vgimg.New(vg.Points(1100), vg.Points(420))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 6, PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3}
	cs := plot.Align([][]*plot.Plot{{tput, conns}}, tiles, dc)
	tput.Draw(cs[0][0])
	conns.Draw(cs[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
