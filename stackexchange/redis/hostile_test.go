package redis_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	goredis "github.com/go-redis/redis/v8"
	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// TestHostileRedisPayloads checks hostile payloads: garbage, truncated, empty,
// wrong-version and 10 MB payloads PUBLISHed with a raw go-redis client
// straight onto the channels two nodes subscribe: the namespace's channel
// (both nodes), node A's own channel and client b1's channel (node B).
//
// After each hostile payload both nodes broadcast a valid message; once
// each crossed to the other node's client, the hostile payload (published
// earlier, on the same subscriber connection) must have been dropped and
// counted: Stats().DecodeErrors is checked exactly at every step. At the
// end every valid message reached each client exactly once, nothing else
// reached them, and the nodes reported nothing but the malformed payloads
// (no pub/sub reconnect, no dropped message).
func TestHostileRedisPayloads(t *testing.T) {
	watchdog(t, 90*time.Second)
	r := ownRedis(t)
	channel := testChannel(t)
	a := startNode(t, "A", redis.Config{Addr: r.Addr}, channel)
	b := startNode(t, "B", redis.Config{Addr: r.Addr}, channel)
	a1 := dialClient(t, "a1", a)
	b1 := dialClient(t, "b1", b)
	raw := rawClient(t, &goredis.Options{Addr: r.Addr, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	nsChannel := a.eng.ChannelOf(hns)
	if got, ok := waitSubscribed(raw, map[string]int64{
		nsChannel: 2, a.nodeChannel(): 1, b.connChannel(b1.id): 1,
	}, 10*time.Second); !ok {
		t.Fatalf("subscribers %v", got)
	}

	// A real envelope, as node A publishes it, to cut hostile ones from.
	sub := raw.Subscribe(ctx, nsChannel)
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	a.broadcast("sample")
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.Close()
	valid := []byte(msg.Payload)
	if !bytes.HasSuffix(valid, []byte("sample")) {
		t.Fatalf("unexpected envelope %q", valid)
	}
	header := len(valid) - len("sample") // the envelope before its body

	type hostile struct {
		name    string
		payload []byte
	}
	rnd := rand.New(rand.NewPCG(4, 8))
	garbage := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	with := func(i int, v byte) []byte {
		b := bytes.Clone(valid)
		b[i] = v
		return b
	}
	head := func(tail ...[]byte) []byte { // magic, version 1, broadcast, no flags
		return append([]byte("SO\x01\x01\x00"), bytes.Join(tail, nil)...)
	}
	uvarint := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	payloads := []hostile{
		{"empty", nil},
		{"one zero byte", []byte{0}},
		{"text", []byte("hello, world")},
		{"neffos text frame", neffos.Message{Namespace: hns, Event: hevMsg, Body: []byte("not an envelope")}.Serialize()},
		{"magic only", []byte("SO")},
		{"garbage 1 KiB", garbage(1 << 10)},
		{"bad magic", with(0, 'X')},
		{"wrong version 0", with(2, 0)},
		{"wrong version 4", with(2, 4)},
		{"wrong version 255", with(2, 255)},
		{"unknown kind 0", with(3, 0)},
		{"unknown kind 11", with(3, 11)},
		{"unknown flags", with(4, 0x80)},
		{"no origin", head(uvarint(0), uvarint(0), uvarint(0), uvarint(0), uvarint(0), uvarint(0), uvarint(0), uvarint(0), []byte("body"))},
		{"string length past the end", head(uvarint(1000), []byte("abc"))},
		{"string length over the limit", head(uvarint(1<<40), []byte("abc"))},
		{"varint overflow", head(bytes.Repeat([]byte{0xff}, 11))},
		{"10 MiB garbage", garbage(10 << 20)},
		{"10 MiB, header claims a 10 MiB origin", head(uvarint(10<<20), garbage(10<<20))},
	}
	for k := 1; k < header; k++ {
		payloads = append(payloads, hostile{fmt.Sprintf("truncated to %d of %d header bytes", k, header), bytes.Clone(valid[:k])})
	}
	targets := []struct {
		name       string
		channel    string
		toA, toB   int64 // how many nodes' counters each payload adds to
		subscribed string
	}{
		{"namespace channel", nsChannel, 1, 1, "both nodes"},
		{"node A's channel", a.nodeChannel(), 1, 0, "node A"},
		{"b1's channel", b.connChannel(b1.id), 0, 1, "node B"},
		// Cluster requests and heartbeats: every node reads them, and no
		// hostile payload there may trigger an operation.
		{"the control channel", a.prefix + ".ctl", 1, 1, "both nodes"},
		{"the heartbeat channel", a.prefix + ".hb", 1, 1, "both nodes"},
	}

	var wantA, wantB int64
	var okBodies []string
	step := 0
	for _, p := range payloads {
		for _, tg := range targets {
			step++
			n, err := raw.Publish(ctx, tg.channel, p.payload).Result()
			if err != nil {
				t.Fatalf("PUBLISH %s onto %s: %v", p.name, tg.name, err)
			}
			if n != tg.toA+tg.toB {
				t.Fatalf("PUBLISH %s onto %s reached %d subscribers, want %d (%s)", p.name, tg.name, n, tg.toA+tg.toB, tg.subscribed)
			}
			wantA += tg.toA
			wantB += tg.toB
			// Other traffic, both ways, after the hostile payload.
			okA, okB := fmt.Sprintf("ok-A-%d", step), fmt.Sprintf("ok-B-%d", step)
			okBodies = append(okBodies, okA, okB)
			a.broadcast(okA)
			b.broadcast(okB)
			if !b1.waitBody(20*time.Second, okA) || !a1.waitBody(20*time.Second, okB) {
				t.Fatalf("after %s onto %s, valid traffic stopped crossing nodes (A stats %+v, B stats %+v)",
					p.name, tg.name, a.exc.Stats(), b.exc.Stats())
			}
			if ga, gb := a.exc.Stats().DecodeErrors, b.exc.Stats().DecodeErrors; int64(ga) != wantA || int64(gb) != wantB {
				t.Fatalf("after %s onto %s: DecodeErrors A=%d B=%d, want %d and %d", p.name, tg.name, ga, gb, wantA, wantB)
			}
		}
	}
	barrier(t, "end", []*hnode{a, b}, a1, b1)

	for _, c := range []*hclient{a1, b1} {
		for _, body := range okBodies {
			if got := c.count(body); got != 1 {
				t.Errorf("client %s got %q %d times, want 1", c.name, body, got)
			}
		}
		// okBodies, "sample" and the two fences; nothing a hostile payload
		// could have turned into a message.
		if got, want := c.received(), len(okBodies)+3; got != want {
			t.Errorf("client %s got %d messages, want %d", c.name, got, want)
		}
	}
	for _, n := range []*hnode{a, b} {
		st := n.exc.Stats()
		if n.malformed.Load() != int64(st.DecodeErrors) {
			t.Errorf("node %s: %d ErrMalformed reports for %d DecodeErrors", n.name, n.malformed.Load(), st.DecodeErrors)
		}
		if other := n.reports.Load() - n.malformed.Load(); other != 0 {
			t.Errorf("node %s reported %d errors besides the malformed payloads", n.name, other)
		}
		if st.Dropped != 0 {
			t.Errorf("node %s dropped %d messages", n.name, st.Dropped)
		}
		t.Logf("node %s: %+v", n.name, st)
	}
	t.Logf("%d hostile payloads (%d truncations) x %d channels: %d publishes, DecodeErrors A=%d B=%d; %d valid messages each reached both clients once",
		len(payloads), header-1, len(targets), step, wantA, wantB, len(okBodies))
}
