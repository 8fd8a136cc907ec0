// Package brokertest starts the real brokers the tests of this module talk
// to. Nothing here imitates a broker: it finds or starts the real server.
package brokertest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// InCI reports whether the tests run in CI, where a missing broker is a
// failure, never a skip.
func InCI() bool { return os.Getenv("CI") != "" }

// Missing fails the test in CI and skips it elsewhere, with how to run it.
func Missing(t testing.TB, what, howto string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s is not available (CI=%s): %s", what, os.Getenv("CI"), howto)
	}
	t.Skipf("%s is not available: %s", what, howto)
}

// FreePort returns a TCP port free on 127.0.0.1 at the time of the call.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// WaitTCP waits until addr accepts TCP connections or d passes.
func WaitTCP(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening after %v: %w", addr, d, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

// Redis is a redis-server process started by a test. Stop ends it by PID.
type Redis struct {
	Addr string
	cmd  *exec.Cmd
	dir  string
}

// StartRedis starts redis-server on a free loopback port with extra
// arguments (for example "--requirepass", "secret"). It keeps nothing on
// disk.
func StartRedis(extra ...string) (*Redis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not on PATH (apt-get install redis-server): %w", err)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "scaleout-redis-")
	if err != nil {
		return nil, err
	}
	args := append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log")}, extra...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	r := &Redis{Addr: "127.0.0.1:" + strconv.Itoa(port), cmd: cmd, dir: dir}
	if err := WaitTCP(r.Addr, 10*time.Second); err != nil {
		r.Stop()
		return nil, err
	}
	return r, nil
}

// Stop kills the process it started and removes its directory.
func (r *Redis) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
	os.RemoveAll(r.dir)
}
