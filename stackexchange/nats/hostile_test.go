package nats_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kataras/neffos"
	natsgo "github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout/internal/brokertest"
	"github.com/neffos-contrib/scaleout/stackexchange/nats"
)

// TestHostilePayloads checks hostile payloads on NATS: garbage, truncated, empty,
// wrong-version and 10 MB payloads published with a raw nats.go client
// straight onto every subject the nodes subscribe (the namespace's, found
// with the engine's ChannelOf, and the node and per-client subjects, found on the
// server's /subsz) are dropped and counted in Stats().DecodeErrors, with no
// panic, while valid broadcasts, a message To a client and an Ask keep
// crossing nodes exactly once.
func TestHostilePayloads(t *testing.T) {
	const big = 10 << 20
	broker := brokertest.NewNATS(t, brokertest.NATSMonitor(), brokertest.NATSConfig("max_payload: 16MB\n"))
	prefix := uniquePrefix()
	a := startHNode(t, newExchange(t, broker.URL, broker.MonitorURL, prefix))
	b := startHNode(t, newExchange(t, broker.URL, broker.MonitorURL, prefix))
	a1, b1 := dialH(t, a), dialH(t, b)
	if _, ok := resumed(t, "warm-ab", a, 10*time.Second, a1, b1); !ok {
		t.Fatal("no cross-node delivery")
	}
	if _, ok := resumed(t, "warm-ba", b, 10*time.Second, a1, b1); !ok {
		t.Fatal("no cross-node delivery")
	}

	raw, err := natsgo.Connect(broker.URL, natsgo.Name("hostile"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	// A valid envelope, as node a publishes it, to cut and bend.
	nsSubject := nats.Engine(a.exc).ChannelOf(hNS)
	capture, err := raw.SubscribeSync(nsSubject)
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Flush(); err != nil {
		t.Fatal(err)
	}
	const capturedBody = "captured-body"
	a.broadcast(capturedBody)
	m, err := capture.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("capturing a valid envelope: %v", err)
	}
	_ = capture.Unsubscribe()
	valid := m.Data
	if !bytes.HasSuffix(valid, []byte(capturedBody)) {
		t.Fatalf("captured payload %q does not end with its body", valid)
	}
	header := len(valid) - len(capturedBody)

	bend := func(i int, v byte) []byte {
		p := bytes.Clone(valid)
		p[i] = v
		return p
	}
	// magic, version, kind 1, flags 0, then fields.
	prefixed := func(fields ...[]byte) []byte {
		p := []byte{'S', 'O', 1, 1, 0}
		for _, f := range fields {
			p = append(p, f...)
		}
		return p
	}
	str := func(s string) []byte { return append(binary.AppendUvarint(nil, uint64(len(s))), s...) }
	randomBytes := func(n int) []byte {
		p := make([]byte, n)
		_, _ = rand.Read(p)
		return p
	}

	type payload struct {
		name string
		data []byte
	}
	small := []payload{
		{"empty", nil},
		{"one byte", []byte{0}},
		{"text", []byte("hello, world")},
		{"neffos frame", []byte("chat;;msg;0;0;hi")},
		{"random 1 KB", randomBytes(1024)},
		{"magic only", []byte("SO")},
		{"bad magic", bend(0, 'X')},
		{"version 0", bend(2, 0)},
		{"version 4", bend(2, 4)},
		{"version 255", bend(2, 255)},
		{"kind 0", bend(3, 0)},
		{"kind 11", bend(3, 11)},
		{"unknown flag", bend(4, 0x80)},
		{"no origin", prefixed(str(""), []byte{0}, str(hNS), str(""), str("msg"), str(""), str(""), str(""))},
		{"length past the end", prefixed(binary.AppendUvarint(nil, 1<<62))},
		{"overlong varint", prefixed(bytes.Repeat([]byte{0xff}, 11))},
	}
	for k := 0; k < header; k++ {
		small = append(small, payload{fmt.Sprintf("truncated to %d of %d header bytes", k, header), bytes.Clone(valid[:k])})
	}
	huge := []payload{
		{"random 10 MB", randomBytes(big)},
		{"10 MB origin", prefixed(str(strings.Repeat("o", big)))},
		{"10 MB namespace", prefixed(str("0123456789abcdef"), []byte{0}, str(strings.Repeat("n", big)))},
		{"10 MB valid magic then zeros", append([]byte{'S', 'O', 1, 1, 0}, make([]byte, big)...)},
	}

	// Every subject the nodes subscribe under the prefix: the namespace
	// (both nodes), each node's own, each client's.
	subjects := map[string]int{}
	for _, s := range serverSubjectList(t, broker.MonitorURL, prefix) {
		subjects[s]++
	}
	if subjects[nsSubject] != 2 {
		t.Fatalf("namespace subject %s has %d subscribers, want 2", nsSubject, subjects[nsSubject])
	}
	t.Logf("subjects under the prefix: %d (namespace, 2 node, 2 client subjects)", len(subjects))

	stats0 := [2]uint64{a.exc.Stats().DecodeErrors, b.exc.Stats().DecodeErrors}
	recv0 := [2]uint64{a.exc.Stats().Received, b.exc.Stats().Received}
	sent := 0 // deliveries to nodes: a subject held by two nodes counts twice
	round := 0
	check := func(stage string) {
		t.Helper()
		// Valid traffic from both nodes, after the hostile payloads (NATS
		// keeps the raw client's order, not across publishers: wait for the
		// counters too).
		round++
		for i, n := range []*hNode{a, b} {
			body := fmt.Sprintf("valid-%d-%d", round, i)
			n.broadcast(body)
			for _, c := range []*hClient{a1, b1} {
				if !c.wait(body, 10*time.Second) {
					t.Fatalf("%s: valid broadcast %s lost", stage, body)
				}
			}
		}
		var got [2]uint64
		if !waitUntil(20*time.Second, func() bool {
			got = [2]uint64{a.exc.Stats().DecodeErrors - stats0[0], b.exc.Stats().DecodeErrors - stats0[1]}
			return got[0]+got[1] >= uint64(sent)
		}) || got[0]+got[1] != uint64(sent) {
			t.Fatalf("%s: DecodeErrors a +%d, b +%d, want %d in all", stage, got[0], got[1], sent)
		}
		t.Logf("after %s: %d hostile deliveries so far, all counted in DecodeErrors (a +%d, b +%d); valid broadcasts from both nodes arrived", stage, sent, got[0], got[1])
	}

	start := time.Now()
	for _, p := range small {
		for subject, holders := range subjects {
			if err := raw.Publish(subject, p.data); err != nil {
				t.Fatalf("raw publish %s: %v", p.name, err)
			}
			sent += holders
		}
	}
	if err := raw.Flush(); err != nil {
		t.Fatal(err)
	}
	check(fmt.Sprintf("%d small payloads on %d subjects", len(small), len(subjects)))

	// The 10 MB ones on the namespace subject only (both nodes read it).
	for _, p := range huge {
		if err := raw.Publish(nsSubject, p.data); err != nil {
			t.Fatalf("raw publish %s: %v", p.name, err)
		}
		sent += 2
		if err := raw.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	check(fmt.Sprintf("%d payloads of 10 MB on the namespace subject", len(huge)))
	took := time.Since(start)

	// Other traffic was not disturbed: every valid message arrived exactly
	// once and nothing else reached a client.
	for _, c := range []*hClient{a1, b1} {
		c.mu.Lock()
		for body, n := range c.got {
			if !strings.HasPrefix(body, "valid-") && !strings.HasPrefix(body, "warm-") && body != capturedBody {
				t.Errorf("a client got %q (%d times): a hostile payload reached it", truncate(body), n)
			}
			if strings.HasPrefix(body, "valid-") && n != 1 {
				t.Errorf("a client got %q %d times, want once", body, n)
			}
		}
		c.mu.Unlock()
	}
	if !b.exc.Publish([]neffos.Message{{Namespace: hNS, Event: "msg", To: a1.id, Body: []byte("to-a1")}}) || !a1.wait("to-a1", 10*time.Second) {
		t.Error("a message To a client of another node was lost after the hostile payloads")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	reply, err := a.srv.Ask(ctx, neffos.Message{Namespace: hNS, Event: "question", To: b1.id, Body: []byte("q")})
	cancel()
	if err != nil || string(reply.Body) != "answer:q" {
		t.Errorf("Ask across nodes after the hostile payloads: %q, %v", reply.Body, err)
	}
	sa, sb := a.exc.Stats(), b.exc.Stats()
	t.Logf("%d small + %d huge payloads, %d node deliveries in %v; received a +%d, b +%d; dropped a %d, b %d",
		len(small), len(huge), sent, took.Round(time.Millisecond), sa.Received-recv0[0], sb.Received-recv0[1], sa.Dropped, sb.Dropped)
}

func truncate(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%q... (%d bytes)", s[:40], len(s))
	}
	return s
}
