package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var palette = map[string]color.Color{
	"none-sync":     color.RGBA{0, 0, 0, 255},
	"none-async":    color.RGBA{140, 140, 140, 255},
	"redis-builtin": color.RGBA{230, 120, 120, 255},
	"nats-builtin":  color.RGBA{120, 160, 230, 255},
	"redis":         color.RGBA{200, 0, 0, 255},
	"nats":          color.RGBA{0, 60, 200, 255},
	"memory":        color.RGBA{0, 150, 0, 255},
}

// plotWidth and plotHeight are the PNG's size.
const (
	plotWidth  = 1100
	plotHeight = 420
)

// plotResults draws deliveries/s and broker connections per node against
// the client count, one line per exchange, side by side in one PNG.
func plotResults(path string, cfg config, sums []*Summary) error {
	img := vgimg.New(vg.Points(plotWidth), vg.Points(plotHeight))
	if _, err := drawPlots(draw.New(img), cfg, sums); err != nil {
		return err
	}
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

// plotLayout is where drawPlots put things: the two plots' tiles (axes and
// data) and the one legend, which has a column of its own on the right so
// that it can cover no data point, wherever the points fall.
type plotLayout struct {
	tiles  []vg.Rectangle
	legend vg.Rectangle
}

func drawPlots(dc draw.Canvas, cfg config, sums []*Summary) (plotLayout, error) {
	tput := plot.New()
	tput.Title.Text = fmt.Sprintf("broadcast deliveries/s, median of %d (K=%d nodes)", cfg.repeat, cfg.k)
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
		p.Add(plotter.NewGrid())
	}
	// One legend for both plots: the exchanges and their styles are the same.
	legend := plot.NewLegend()
	legend.Top, legend.Left = true, true
	for _, ex := range cfg.exchanges {
		var tp, cp plotter.XYs
		for _, n := range cfg.ns {
			s := findSummary(sums, ex, n)
			if s == nil {
				continue
			}
			tp = append(tp, plotter.XY{X: float64(n), Y: s.Broadcast.Median})
			if s.BrokerConnsPerNode.Median >= 1 {
				cp = append(cp, plotter.XY{X: float64(n), Y: s.BrokerConnsPerNode.Median})
			}
		}
		if len(tp) == 0 && len(cp) == 0 {
			continue
		}
		style := func(xys plotter.XYs) (*plotter.Line, *plotter.Scatter, error) {
			l, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, nil, err
			}
			c := palette[ex]
			l.Color, pts.Color = c, c
			l.Width = vg.Points(2)
			if strings.HasSuffix(ex, "-builtin") {
				l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			}
			return l, pts, nil
		}
		var thumbs []plot.Thumbnailer
		for _, pc := range []struct {
			p   *plot.Plot
			xys plotter.XYs
		}{{tput, tp}, {conns, cp}} {
			if len(pc.xys) == 0 {
				continue
			}
			l, pts, err := style(pc.xys)
			if err != nil {
				return plotLayout{}, err
			}
			pc.p.Add(l, pts)
			thumbs = []plot.Thumbnailer{l, pts}
		}
		name := ex
		if len(cp) == 0 {
			name += " (no broker)"
		}
		legend.Add(name, thumbs...)
	}

	// The legend's column: as wide as its widest entry.
	probe := legend.Rectangle(dc)
	legendW := probe.Max.X - probe.Min.X + vg.Millimeter*4
	plots := draw.Crop(dc, 0, -legendW, 0, 0)
	legendArea := draw.Crop(dc, dc.Max.X-dc.Min.X-legendW, 0, 0, 0)
	legendArea = draw.Crop(legendArea, vg.Millimeter*2, 0, 0, -vg.Millimeter*10)

	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 6, PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3}
	cs := plot.Align([][]*plot.Plot{{tput, conns}}, tiles, plots)
	tput.Draw(cs[0][0])
	conns.Draw(cs[0][1])
	legend.Draw(legendArea)
	return plotLayout{
		tiles:  []vg.Rectangle{cs[0][0].Rectangle, cs[0][1].Rectangle},
		legend: legend.Rectangle(legendArea),
	}, nil
}

// replot writes dir/plot.png again from dir/results.jsonl, without running
// anything: the client counts, exchanges (in the file's order), repeats and
// node count come from the file.
func replot(dir string) error {
	sums, err := readSummaries(filepath.Join(dir, "results.jsonl"))
	if err != nil {
		return err
	}
	if len(sums) == 0 {
		return fmt.Errorf("%s: no results", filepath.Join(dir, "results.jsonl"))
	}
	cfg := summariesConfig(sums)
	return plotResults(filepath.Join(dir, "plot.png"), cfg, sums)
}

// summariesConfig is what plotResults needs of the config that produced
// sums.
func summariesConfig(sums []*Summary) config {
	var cfg config
	for _, s := range sums {
		if !slices.Contains(cfg.exchanges, s.Exchange) {
			cfg.exchanges = append(cfg.exchanges, s.Exchange)
		}
		if !slices.Contains(cfg.ns, s.Clients) {
			cfg.ns = append(cfg.ns, s.Clients)
		}
		cfg.repeat = max(cfg.repeat, s.Repeats)
		cfg.k = max(cfg.k, s.Nodes)
	}
	slices.Sort(cfg.ns)
	return cfg
}

func readSummaries(path string) ([]*Summary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var sums []*Summary
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		s := new(Summary)
		if err := json.Unmarshal(sc.Bytes(), s); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		sums = append(sums, s)
	}
	return sums, sc.Err()
}
