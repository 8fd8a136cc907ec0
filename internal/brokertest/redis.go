// Package brokertest starts the real brokers the tests of this module talk
// to. Nothing here imitates a broker: it finds or starts the real server.
package brokertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
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

// Redis is a redis-server process started by a test, on a loopback port of
// its own. Every signal goes to the process it started, by PID: Kill,
// Pause, Resume and Stop never touch another redis-server.
//
// The methods are Unix-only (SIGSTOP/SIGCONT) and safe for concurrent use.
type Redis struct {
	// Addr is host:port of the plain-text port, or of the TLS port for a
	// server started with StartRedisTLS.
	Addr string
	// Port is Addr's port. Restart listens on it again.
	Port int

	bin  string
	args []string
	dir  string

	mu  sync.Mutex
	cmd *exec.Cmd // nil while killed
}

// StartRedis starts redis-server on a free loopback port with extra
// arguments (for example "--requirepass", "secret", or "--user", "alice",
// "on", ">pw", "~*", "&*", "+@all" for an ACL user). It keeps nothing on
// disk.
func StartRedis(extra ...string) (*Redis, error) {
	return startRedis(false, extra)
}

// StartRedisTLS starts redis-server with TLS only: no plain-text port, the
// TLS port on a free loopback port, serving files' certificate. Clients
// are not asked for a certificate. Addr is the TLS port's address.
func StartRedisTLS(files *TLSFiles, extra ...string) (*Redis, error) {
	args := append([]string{"--tls-cert-file", files.CertFile, "--tls-key-file", files.KeyFile,
		"--tls-ca-cert-file", files.CAFile, "--tls-auth-clients", "no"}, extra...)
	return startRedis(true, args)
}

func startRedis(tls bool, extra []string) (*Redis, error) {
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
	ports := []string{"--port", strconv.Itoa(port)}
	if tls {
		ports = []string{"--port", "0", "--tls-port", strconv.Itoa(port)}
	}
	args := append(append([]string{"--bind", "127.0.0.1"}, ports...), "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	args = append(args, extra...)
	return launch(bin, port, dir, args)
}

// launch starts bin with args as a Redis listening on port, owning dir.
// On failure dir is removed.
func launch(bin string, port int, dir string, args []string) (*Redis, error) {
	r := &Redis{Addr: "127.0.0.1:" + strconv.Itoa(port), Port: port, bin: bin, args: args, dir: dir}
	if err := r.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return r, nil
}

// start runs the process and waits until it listens. Called with r.mu held
// or before r is shared.
func (r *Redis) start() error {
	cmd := exec.Command(r.bin, r.args...)
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return err
	}
	r.cmd = cmd
	if err := WaitTCP(r.Addr, 10*time.Second); err != nil {
		r.killLocked()
		return fmt.Errorf("%w (log: %s)", err, r.logTail())
	}
	return nil
}

func (r *Redis) logTail() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// PID returns the process id of the running server, or 0 while it is
// killed.
func (r *Redis) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Kill sends SIGKILL to the server's PID and waits for it to exit. The
// server's port stays reserved for Restart only as long as nobody else
// takes it (the tests bind loopback ports of their own).
func (r *Redis) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return errors.New("brokertest: redis-server is not running")
	}
	return r.killLocked()
}

func (r *Redis) killLocked() error {
	err := r.cmd.Process.Signal(syscall.SIGKILL)
	_ = r.cmd.Wait() // "signal: killed"
	r.cmd = nil
	return err
}

// Restart starts the server again on the same port with the same
// arguments, after Kill. It returns once the port accepts connections.
func (r *Redis) Restart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return errors.New("brokertest: redis-server is still running")
	}
	return r.start()
}

// Pause stops the server with SIGSTOP: its sockets stay open and the kernel
// still accepts connections on its port, but nothing is answered.
func (r *Redis) Pause() error { return r.signal(syscall.SIGSTOP) }

// Resume continues a paused server with SIGCONT.
func (r *Redis) Resume() error { return r.signal(syscall.SIGCONT) }

func (r *Redis) signal(sig os.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return errors.New("brokertest: redis-server is not running")
	}
	return r.cmd.Process.Signal(sig)
}

// Stop kills the process it started (paused or not) and removes its
// directory. It is idempotent.
func (r *Redis) Stop() {
	r.mu.Lock()
	if r.cmd != nil {
		_ = r.killLocked()
	}
	r.mu.Unlock()
	os.RemoveAll(r.dir)
}

// TLSFiles are a certificate authority and a server certificate it signed,
// generated at run time, as PEM files.
type TLSFiles struct {
	CertFile, KeyFile string // the server's certificate and key
	CAFile            string // the CA's certificate
	// CAPool holds the CA's certificate, for a client's tls.Config.RootCAs.
	CAPool *x509.CertPool
}

// NewTLSFiles generates a CA and a server certificate valid for 127.0.0.1,
// ::1 and localhost for one day, and writes them to dir.
func NewTLSFiles(dir string) (*TLSFiles, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "scaleout test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	f := &TLSFiles{
		CertFile: filepath.Join(dir, "server.crt"),
		KeyFile:  filepath.Join(dir, "server.key"),
		CAFile:   filepath.Join(dir, "ca.crt"),
		CAPool:   x509.NewCertPool(),
	}
	f.CAPool.AddCert(ca)
	for _, w := range []struct {
		path, typ string
		der       []byte
	}{{f.CertFile, "CERTIFICATE", der}, {f.KeyFile, "PRIVATE KEY", keyDER}, {f.CAFile, "CERTIFICATE", caDER}} {
		if err := os.WriteFile(w.path, pem.EncodeToMemory(&pem.Block{Type: w.typ, Bytes: w.der}), 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}
