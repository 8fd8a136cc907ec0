package nats_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/kataras/neffos"
	natsgo "github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout"
	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/nats"
)

// TestAuth checks credentials on NATS: a nats-server of its own with
// user/password, with a token, and with TLS (certificates made here). With
// the right credentials two nodes deliver across NATS to real neffos
// clients; with wrong ones NewStackExchange fails at once with an error
// wrapping scaleout.ErrBrokerUnavailable, the server saw exactly one
// connection attempt (nats.go does not retry a failed first connect, even
// with MaxReconnects -1), and no goroutine is left.
func TestAuth(t *testing.T) {
	t.Run("UserPassword", func(t *testing.T) {
		broker := brokertest.NewNATS(t, brokertest.NATSMonitor(), brokertest.NATSArgs("--user", "alice", "--pass", "s3cret"))
		checkDelivery(t, broker.URL, natsgo.UserInfo("alice", "s3cret"))
		checkDelivery(t, "nats://alice:s3cret@"+broker.Addr)
		checkRejected(t, broker, errIs(natsgo.ErrAuthorization), broker.URL, natsgo.UserInfo("alice", "wrong"))
		checkRejected(t, broker, errIs(natsgo.ErrAuthorization), broker.URL, natsgo.UserInfo("mallory", "s3cret"))
		checkRejected(t, broker, errIs(natsgo.ErrAuthorization), broker.URL)
	})
	t.Run("Token", func(t *testing.T) {
		broker := brokertest.NewNATS(t, brokertest.NATSMonitor(), brokertest.NATSArgs("--auth", "t0ken"))
		checkDelivery(t, broker.URL, natsgo.Token("t0ken"))
		checkDelivery(t, "nats://t0ken@"+broker.Addr)
		checkRejected(t, broker, errIs(natsgo.ErrAuthorization), broker.URL, natsgo.Token("wrong"))
		checkRejected(t, broker, errIs(natsgo.ErrAuthorization), broker.URL)
	})
	t.Run("TLS", func(t *testing.T) {
		pki := newPKI(t)
		broker := brokertest.NewNATS(t, brokertest.NATSMonitor(),
			brokertest.NATSArgs("--tls", "--tlscert", pki.CertFile, "--tlskey", pki.KeyFile))
		tlsURL := "tls://" + broker.Addr
		checkDelivery(t, tlsURL, natsgo.Secure(&tls.Config{RootCAs: pki.CAPool, MinVersion: tls.VersionTLS12}))
		checkDelivery(t, broker.URL, natsgo.RootCAs(pki.CAFile))
		// A client that does not trust the test's CA.
		checkRejected(t, broker, errAs[x509.UnknownAuthorityError](), tlsURL, natsgo.Secure(&tls.Config{MinVersion: tls.VersionTLS12}))
		// A certificate for another name.
		checkRejected(t, broker, errAs[x509.HostnameError](), tlsURL, natsgo.Secure(&tls.Config{RootCAs: pki.CAPool, ServerName: "elsewhere.example", MinVersion: tls.VersionTLS12}))
	})
	t.Run("TLSUserPassword", func(t *testing.T) {
		pki := newPKI(t)
		broker := brokertest.NewNATS(t, brokertest.NATSMonitor(),
			brokertest.NATSArgs("--tls", "--tlscert", pki.CertFile, "--tlskey", pki.KeyFile, "--user", "alice", "--pass", "s3cret"))
		secure := natsgo.Secure(&tls.Config{RootCAs: pki.CAPool, MinVersion: tls.VersionTLS12})
		checkDelivery(t, "tls://"+broker.Addr, secure, natsgo.UserInfo("alice", "s3cret"))
		checkRejected(t, broker, errIs(natsgo.ErrAuthorization), "tls://"+broker.Addr, secure, natsgo.UserInfo("alice", "wrong"))
	})
}

// checkDelivery starts two nodes on url with options and checks that a
// broadcast and a message To a client cross them.
func checkDelivery(t *testing.T, url string, options ...natsgo.Option) {
	t.Helper()
	prefix := uniquePrefix()
	var nodes [2]*hNode
	for i := range nodes {
		exc, err := nats.NewStackExchange(url, options...)
		if err != nil {
			t.Fatalf("NewStackExchange(%s) with valid credentials: %v", url, err)
		}
		exc.SubjectPrefix = prefix
		nodes[i] = startHNode(t, exc)
	}
	c0, c1 := dialH(t, nodes[0]), dialH(t, nodes[1])
	if _, ok := resumed(t, "auth-01", nodes[0], 10*time.Second, c0, c1); !ok {
		t.Fatalf("%s: no broadcast across nodes", url)
	}
	if _, ok := resumed(t, "auth-10", nodes[1], 10*time.Second, c0, c1); !ok {
		t.Fatalf("%s: no broadcast across nodes", url)
	}
	if !nodes[1].exc.Publish([]neffos.Message{{Namespace: hNS, Event: "msg", To: c0.id, Body: []byte("to-c0")}}) || !c0.wait("to-c0", 10*time.Second) {
		t.Fatalf("%s: no message To a client across nodes", url)
	}
}

// checkRejected checks that NewStackExchange fails with an error wrapping
// scaleout.ErrBrokerUnavailable and matching want, within nats.go's connect Timeout, after exactly one
// connection attempt, leaving no goroutine.
func checkRejected(t *testing.T, broker *brokertest.NATS, want errMatch, url string, options ...natsgo.Option) {
	t.Helper()
	before := totalConnections(t, broker.MonitorURL)
	g0 := runtime.NumGoroutine()
	start := time.Now()
	exc, err := nats.NewStackExchange(url, options...)
	took := time.Since(start)
	if exc != nil {
		exc.Close()
		t.Fatalf("NewStackExchange(%s) with wrong credentials returned an exchange", url)
	}
	if !errors.Is(err, scaleout.ErrBrokerUnavailable) {
		t.Errorf("err = %v, want one wrapping scaleout.ErrBrokerUnavailable", err)
	}
	if !want.match(err) {
		t.Errorf("err = %v, want one matching %s", err, want.name)
	}
	if took > natsgo.DefaultTimeout+callSlack {
		t.Errorf("NewStackExchange took %v to fail", took)
	}
	g1 := goroutinesAtMost(g0, 5*time.Second)
	if g1 > g0 {
		t.Errorf("goroutines: %d before, %d after the failed NewStackExchange", g0, g1)
	}
	// No goroutine is left that could retry; the server's count shows the
	// attempts made.
	attempts := totalConnections(t, broker.MonitorURL) - before
	if attempts != 1 {
		t.Errorf("the server saw %d connection attempts, want 1 (no retry)", attempts)
	}
	t.Logf("rejected in %v after %d attempt(s), goroutines %d -> %d: %v", took.Round(time.Millisecond), attempts, g0, g1, err)
}

// errMatch tells the error a rejection must carry besides
// scaleout.ErrBrokerUnavailable.
type errMatch struct {
	name  string
	match func(error) bool
}

func errIs(target error) errMatch {
	return errMatch{target.Error(), func(err error) bool { return errors.Is(err, target) }}
}

func errAs[T error]() errMatch {
	var zero T
	return errMatch{fmt.Sprintf("%T", zero), func(err error) bool { var t T; return errors.As(err, &t) }}
}

// newPKI makes a CA and a server certificate for 127.0.0.1 and localhost,
// for one test.
func newPKI(t *testing.T) *brokertest.TLSFiles {
	t.Helper()
	f, err := brokertest.NewTLSFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return f
}
