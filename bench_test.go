package scaleout

import (
	"strconv"
	"testing"

	"github.com/kataras/neffos"
)

// Micro-benchmarks of the engine's hot paths. Run with
//
//	go test -run '^$' -bench . -benchmem
//
// The cross-node comparison with real brokers and clients is the command in
// _benchmarks.

func benchEnvelope(bodySize int) envelope {
	body := make([]byte, bodySize)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	return envelope{kind: kindBroadcast, origin: "0123456789abcdef", namespace: "chat", room: "lobby", event: "msg", exclude: "6c1f0b1e-5a1d-4b9e-9d7e-1f2a3b4c5d6e", body: body}
}

func BenchmarkEnvelopeEncode(b *testing.B) {
	for _, size := range []int{16, 1024} {
		b.Run("body="+strconv.Itoa(size), func(b *testing.B) {
			e := benchEnvelope(size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				_ = encodeEnvelope(&e)
			}
		})
	}
}

func BenchmarkEnvelopeDecode(b *testing.B) {
	for _, size := range []int{16, 1024} {
		b.Run("body="+strconv.Itoa(size), func(b *testing.B) {
			e := benchEnvelope(size)
			payload := encodeEnvelope(&e)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decodeEnvelope(payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkToken(b *testing.B) {
	for _, name := range []string{"chat", "6c1f0b1e-5a1d-4b9e-9d7e-1f2a3b4c5d6e", "room; ünïcødé name"} {
		b.Run(strconv.Quote(name), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = token(name)
			}
		})
	}
}

// newBenchNodes returns n exchanges on one MemoryBroker, each initialised
// with namespace "chat" and with no client; they are closed at the end.
func newBenchNodes(b *testing.B, n int) []*Exchange {
	b.Helper()
	mb := NewMemoryBroker()
	var exs []*Exchange
	for i := 0; i < n; i++ {
		e := New(mb.Broker(), "bench", Options{})
		if err := e.Init(neffos.Namespaces{"chat": nil}); err != nil {
			b.Fatal(err)
		}
		exs = append(exs, e)
	}
	b.Cleanup(func() {
		for _, e := range exs {
			_ = e.Close()
		}
	})
	return exs
}

// BenchmarkPublish is Exchange.Publish of one broadcast: local fan-out over
// zero clients, encode, and the MemoryBroker's synchronous delivery to every
// node (own echo dropped after decode; other nodes decode and fan out to
// their zero clients).
func BenchmarkPublish(b *testing.B) {
	for _, nodes := range []int{1, 3} {
		b.Run("nodes="+strconv.Itoa(nodes), func(b *testing.B) {
			e := newBenchNodes(b, nodes)[0]
			msgs := []neffos.Message{{Namespace: "chat", Event: "msg", Body: []byte("hello, world")}}
			b.ReportAllocs()
			for b.Loop() {
				if !e.Publish(msgs) {
					b.Fatal("Publish failed")
				}
			}
		})
	}
}

// BenchmarkPublishBatch is one Publish call with 16 messages (neffos hands
// Broadcast(nil, m1, m2, ...) over as one batch); reported per message.
func BenchmarkPublishBatch(b *testing.B) {
	e := newBenchNodes(b, 3)[0]
	msgs := make([]neffos.Message, 16)
	for i := range msgs {
		msgs[i] = neffos.Message{Namespace: "chat", Event: "msg", Body: []byte("hello, world " + strconv.Itoa(i))}
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if !e.Publish(msgs) {
			b.Fatal("Publish failed")
		}
		n += len(msgs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/msg")
}

// BenchmarkDeliver is the receive path of a remote broadcast on a node with
// no clients: decode once, then fan out.
func BenchmarkDeliver(b *testing.B) {
	e := newBenchNodes(b, 1)[0]
	env := benchEnvelope(64)
	env.origin = "fedcba9876543210" // another node
	env.exclude = ""
	payload := encodeEnvelope(&env)
	ch := e.names.namespace("chat")
	b.ReportAllocs()
	for b.Loop() {
		e.deliver(ch, payload)
	}
}
