package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	goredis "github.com/go-redis/redis/v8"
)

// proc is a broker server process this benchmark started on a free
// loopback port. It is stopped by its PID (stop), never by name; the
// shared brokers on 6379/4222 are never touched.
type proc struct {
	kind string // "redis" or "nats"
	cmd  *exec.Cmd
	addr string // 127.0.0.1:port
	mon  string // nats: monitoring base URL
	dir  string
	done chan struct{}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func lookBin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/bin", "/usr/bin"} {
		if p := filepath.Join(d, name); fileExists(p) {
			return p
		}
	}
	return name
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func startProc(kind string, name string, args []string, dir string) (*proc, error) {
	cmd := exec.Command(lookBin(name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the benchmark
	logf, err := os.Create(filepath.Join(dir, kind+".stdout"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{kind: kind, cmd: cmd, dir: dir, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

// startRedis starts redis-server on a free port, with no persistence.
func startRedis() (*proc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "scaleout-bench-redis-")
	if err != nil {
		return nil, err
	}
	p, err := startProc("redis", "redis-server", []string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no",
		"--dir", dir, "--maxclients", "10000", "--daemonize", "no", "--protected-mode", "no",
	}, dir)
	if err != nil {
		return nil, err
	}
	p.addr = fmt.Sprintf("127.0.0.1:%d", port)
	rc := goredis.NewClient(&goredis.Options{Addr: p.addr, PoolSize: 1, MaxRetries: -1})
	defer rc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := rc.Ping(ctx).Err()
		cancel()
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("redis-server on %s did not answer: %w", p.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startNATS starts nats-server on a free port with its monitoring endpoint
// (-m) on another, for /connz.
func startNATS() (*proc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	mport, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "scaleout-bench-nats-")
	if err != nil {
		return nil, err
	}
	p, err := startProc("nats", "nats-server", []string{
		"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-m", strconv.Itoa(mport), "-l", filepath.Join(dir, "nats.log"),
	}, dir)
	if err != nil {
		return nil, err
	}
	p.addr = fmt.Sprintf("127.0.0.1:%d", port)
	p.mon = fmt.Sprintf("http://127.0.0.1:%d", mport)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			c.Close()
			if r, err := http.Get(p.mon + "/varz"); err == nil {
				r.Body.Close()
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("nats-server on %s did not answer", p.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM to the process this benchmark started (by PID), then
// SIGKILL after 5s, and removes its directory.
func (p *proc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	_ = os.RemoveAll(p.dir)
}

// brokerCount is what a broker server reports: client connections and
// subscriptions (channels + patterns) over all of them.
type brokerCount struct {
	Conns int `json:"conns"`
	Subs  int `json:"subs"`
}

// redisCount reads CLIENT LIST, leaving out its own connection.
func redisCount(addr string) (brokerCount, error) {
	var bc brokerCount
	rc := goredis.NewClient(&goredis.Options{Addr: addr, PoolSize: 1})
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := rc.ClientList(ctx).Result()
	if err != nil {
		return bc, err
	}
	sc := bufio.NewScanner(strings.NewReader(list))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.Contains(line, "cmd=client|list") || strings.Contains(line, "cmd=client ") {
			continue
		}
		bc.Conns++
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			if k == "sub" || k == "psub" {
				n, _ := strconv.Atoi(v)
				bc.Subs += n
			}
		}
	}
	return bc, sc.Err()
}

// natsCount reads the server's /connz.
func natsCount(mon string) (brokerCount, error) {
	var bc brokerCount
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, mon+"/connz?limit=100000", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return bc, err
	}
	defer resp.Body.Close()
	var cz struct {
		Total int `json:"total"`
		Conns []struct {
			Subs int `json:"subscriptions"`
		} `json:"connections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&cz); err != nil {
		return bc, err
	}
	bc.Conns = cz.Total
	for _, c := range cz.Conns {
		bc.Subs += c.Subs
	}
	return bc, nil
}

// startBroker starts the broker process exchange ex needs, if any: nil for
// the memory broker.
func startBroker(ex string) (*proc, error) {
	switch {
	case needsRedis(ex):
		return startRedis()
	case needsNATS(ex):
		return startNATS()
	}
	return nil, nil
}
