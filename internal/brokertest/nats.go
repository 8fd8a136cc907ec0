package brokertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// NATSServerBin returns the nats-server binary: $NATS_SERVER_BIN, else
// nats-server on PATH, else /usr/sbin/nats-server (Debian's package).
func NATSServerBin() (string, error) {
	if b := os.Getenv("NATS_SERVER_BIN"); b != "" {
		return b, nil
	}
	if b, err := exec.LookPath("nats-server"); err == nil {
		return b, nil
	}
	const debian = "/usr/sbin/nats-server"
	if _, err := os.Stat(debian); err == nil {
		return debian, nil
	}
	return "", errors.New("nats-server not found (apt-get install nats-server, or set NATS_SERVER_BIN)")
}

// NATS is a nats-server process started by a test, on a free loopback port.
// It can be killed (SIGKILL), paused (SIGSTOP), resumed (SIGCONT) and
// restarted on the same port with the same arguments. Every signal goes to
// the PID this value started; nothing else is ever signalled.
//
// Methods are safe for concurrent use.
type NATS struct {
	// Port is the client port, the same across restarts.
	Port int
	// Addr is "127.0.0.1:<Port>".
	Addr string
	// URL is "nats://127.0.0.1:<Port>".
	URL string
	// MonitorURL is "http://127.0.0.1:<port>" when StartNATS was asked for
	// monitoring (NATSMonitor), else "".
	MonitorURL string
	// Dir is a directory private to this server (log file, config files a
	// test writes); removed by Stop.
	Dir string
	// Log is the server's log file, appended to across restarts.
	Log string

	bin   string
	args  []string
	peers int // cluster members it has routes to (NATSCluster), else 0

	mu     sync.Mutex
	cmd    *exec.Cmd
	waited chan struct{} // closed when cmd's Wait returned
}

// NATSOption adjusts how StartNATS runs the server.
type NATSOption func(*natsConfig)

type natsConfig struct {
	monitor bool
	config  string
	extra   []string
	peers   int // set by StartNATSCluster
}

// NATSMonitor also opens the HTTP monitoring endpoint on a free port.
func NATSMonitor() NATSOption { return func(c *natsConfig) { c.monitor = true } }

// NATSConfig writes text to a configuration file in the server's Dir and
// passes it with -c (for settings that have no flag, such as max_payload).
// Flags still override it.
func NATSConfig(text string) NATSOption { return func(c *natsConfig) { c.config = text } }

// NATSArgs appends command-line arguments, for example "--user", "u",
// "--pass", "p", or "--tls", "--tlscert", file, "--tlskey", file.
func NATSArgs(args ...string) NATSOption {
	return func(c *natsConfig) { c.extra = append(c.extra, args...) }
}

// StartNATS starts nats-server on a free loopback port and waits until it
// sends its INFO line. Stop it with Stop.
func StartNATS(options ...NATSOption) (*NATS, error) {
	var cfg natsConfig
	for _, o := range options {
		o(&cfg)
	}
	bin, err := NATSServerBin()
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "scaleout-nats-")
	if err != nil {
		return nil, err
	}
	n := &NATS{
		Port:  port,
		Addr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Dir:   dir,
		Log:   filepath.Join(dir, "nats.log"),
		bin:   bin,
		peers: cfg.peers,
	}
	n.URL = "nats://" + n.Addr
	n.args = []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-l", n.Log}
	if cfg.config != "" {
		file := filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(file, []byte(cfg.config), 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		n.args = append(n.args, "-c", file)
	}
	if cfg.monitor {
		mport, err := FreePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		n.args = append(n.args, "-m", strconv.Itoa(mport))
		n.MonitorURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(mport))
	}
	n.args = append(n.args, cfg.extra...)
	if err := n.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return n, nil
}

// NewNATS is StartNATS for a test: a missing binary skips the test (fails
// it in CI), and the server is stopped by t.Cleanup.
func NewNATS(t testing.TB, options ...NATSOption) *NATS {
	t.Helper()
	if _, err := NATSServerBin(); err != nil {
		Missing(t, "nats-server", err.Error())
	}
	n, err := StartNATS(options...)
	if err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	t.Cleanup(n.Stop)
	return n
}

func (n *NATS) start() error {
	cmd := exec.Command(n.bin, n.args...)
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.bin, err)
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	n.mu.Lock()
	n.cmd, n.waited = cmd, waited
	n.mu.Unlock()
	if err := waitINFO(n.Addr, waited, 10*time.Second); err != nil {
		n.kill()
		return fmt.Errorf("nats-server %v: %w (log %s: %s)", n.args, err, n.Log, natsLogTail(n.Log))
	}
	return nil
}

// waitINFO waits until addr answers with the NATS INFO line, the process
// exits, or d passes.
func waitINFO(addr string, exited <-chan struct{}, d time.Duration) error {
	err := poll(exited, d, func(context.Context) error {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "INFO ") {
			return fmt.Errorf("no INFO line: %q %v", line, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	return nil
}

// PID returns the process id of the running server, or 0.
func (n *NATS) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Kill sends SIGKILL to the server and waits for it to exit. It returns
// nil: the signature is the one Redis.Kill and stackexchangetest.Process
// have.
func (n *NATS) Kill() error {
	n.kill()
	return nil
}

func (n *NATS) kill() {
	n.mu.Lock()
	cmd, waited := n.cmd, n.waited
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL) // a stopped process dies too
	<-waited
}

// Restart starts the server again on the same port with the same
// arguments, killing the running one first if there is one. A member of a
// NATSCluster returns once its routes to every other member are up again
// (see NATSCluster).
func (n *NATS) Restart() error {
	n.kill()
	if err := n.start(); err != nil {
		return err
	}
	if n.peers > 0 {
		return n.waitRoutes(routesTimeout)
	}
	return nil
}

// Pause stops the server with SIGSTOP: its sockets stay open, nothing is
// read or answered.
func (n *NATS) Pause() error { return n.signal(syscall.SIGSTOP) }

// Resume continues a paused server with SIGCONT.
func (n *NATS) Resume() error { return n.signal(syscall.SIGCONT) }

func (n *NATS) signal(sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return errors.New("nats-server not running")
	}
	if err := n.cmd.Process.Signal(sig); err != nil {
		return err
	}
	return nil
}

// Stop kills the server by its PID and removes its directory. It is
// idempotent.
func (n *NATS) Stop() {
	n.kill()
	os.RemoveAll(n.Dir)
}

// natsLogTail returns the end of a log file, for error messages.
func natsLogTail(file string) string {
	b, _ := os.ReadFile(file)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
