package scaleout

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func sampleEnvelopes() []envelope {
	body := make([]byte, 256)
	for i := range body {
		body[i] = byte(i)
	}
	return []envelope{
		{kind: kindBroadcast, origin: "0123456789abcdef", namespace: "chat", event: "msg", body: []byte("hi")},
		{kind: kindBroadcast, flags: flagBinary | flagNative, origin: "n", namespace: "", room: "r;1 ü", event: "ev;t", to: "id", exclude: "x", body: body},
		{kind: kindAsk, origin: "n", id: 1<<64 - 1, namespace: "名前", event: "q"},
		{kind: kindReply, flags: flagError, origin: "n", id: 7, errText: "boom; ü"},
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	for i, e := range sampleEnvelopes() {
		got, err := decodeEnvelope(encodeEnvelope(&e))
		if err != nil {
			t.Fatalf("sample %d: %v", i, err)
		}
		if got.kind != e.kind || got.flags != e.flags || got.origin != e.origin || got.id != e.id ||
			got.namespace != e.namespace || got.room != e.room || got.event != e.event || got.to != e.to ||
			got.exclude != e.exclude || got.errText != e.errText || !bytes.Equal(got.body, e.body) {
			t.Errorf("sample %d: round trip changed the envelope:\n got %+v\nwant %+v", i, got, e)
		}
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	good := encodeEnvelope(&sampleEnvelopes()[1])
	wrongVersion := append([]byte(nil), good...)
	wrongVersion[2] = 9
	badKind := append([]byte(nil), good...)
	badKind[3] = 0
	cases := map[string][]byte{
		"empty":         nil,
		"short":         []byte("SO"),
		"bad magic":     []byte("XX\x01\x01\x00\x01n"),
		"wrong version": wrongVersion,
		"bad kind":      badKind,
		"no origin":     encodeEnvelope(&envelope{kind: kindBroadcast}),
		"huge length":   []byte("SO\x01\x01\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
		"neffos frame":  []byte("1;chat;;msg;0;0;hello"),
	}
	for i := 6; i < len(good)-256; i++ { // every truncation inside the header
		cases["truncated "+strings.Repeat("|", i%5)+string(rune('0'+i%10))] = good[:i]
	}
	for name, b := range cases {
		if _, err := decodeEnvelope(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
}

// FuzzDecodeEnvelope: the decoder never panics, and whatever it accepts
// encodes back to an envelope that decodes the same.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, e := range sampleEnvelopes() {
		f.Add(encodeEnvelope(&e))
	}
	f.Add([]byte("1;chat;;msg;0;0;hello"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEnvelope(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		again, err := decodeEnvelope(encodeEnvelope(&e))
		if err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
		if again.origin != e.origin || again.namespace != e.namespace || !bytes.Equal(again.body, e.body) || again.id != e.id {
			t.Fatalf("re-encoding changed the envelope")
		}
	})
}

func TestTokenIsInjectiveAndSafe(t *testing.T) {
	long := strings.Repeat("x", 10<<10)
	names := []string{"", "_", "a.b", "a_b", "a_2eb", "*", ">", "a", "a b", "a\tb", "a\nb", "a;b", "ü", "名前",
		"~", "a~b", "-", long, long[:len(long)-1] + "y", strings.Repeat("a.", 150)}
	seen := map[string]string{}
	for _, n := range names {
		tok := token(n)
		if prev, dup := seen[tok]; dup {
			t.Errorf("names %q and %q share the token %q", prev, n, tok)
		}
		seen[tok] = n
		if tok == "" || len(tok) > maxToken+1 && tok[0] != '~' {
			t.Errorf("token(%q) = %q: empty or too long", n, tok)
		}
		for _, c := range []byte(tok) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '~') {
				t.Errorf("token(%q) = %q has byte %q", n, tok, c)
			}
		}
	}
	if p := prefixName("my app.*"); strings.ContainsAny(p, " *>") {
		t.Errorf("prefixName kept unsafe bytes: %q", p)
	}
	if p := prefixName("myapp.ws"); p != "myapp.ws" {
		t.Errorf("prefixName(%q) = %q, want it unchanged", "myapp.ws", p)
	}
}

func TestAskToken(t *testing.T) {
	tok := askToken("0123456789abcdef", 12345)
	// neffos strips one '!' from the second byte at up to three places.
	for strip := 0; strip <= 3; strip++ {
		got := tok[:1] + tok[1+strip:]
		node, id, ok := parseAskToken(got)
		if !ok || node != "0123456789abcdef" || id != 12345 {
			t.Errorf("after %d strips %q parsed as %q %d %v", strip, got, node, id, ok)
		}
	}
	for _, bad := range []string{"", "S", "1700000000", "$S!!!0123456789abcdef-1", "S!!!0123-1", "S!!!0123456789abcdeg-1", "S0123456789abcdef-zz!"} {
		if _, _, ok := parseAskToken(bad); ok {
			t.Errorf("parseAskToken(%q) accepted a foreign token", bad)
		}
	}
}

// TestDecodeVersion1: envelopes of nodes that predate sequence numbers are
// still read, unsequenced.
func TestDecodeVersion1(t *testing.T) {
	e := sampleEnvelopes()[1]
	v2 := encodeEnvelope(&e)
	// Version 1 is version 3 without the stream, seq and age varints (all
	// 0 here: one byte each), right after the id.
	var v1 []byte
	v1 = append(v1, v2[:2]...)
	v1 = append(v1, envelopeV1)
	head := len(appendString(v2[:5:5], e.origin)) + 1 // + the id's one byte
	v1 = append(v1, v2[3:head]...)
	v1 = append(v1, v2[head+3:]...)
	got, err := decodeEnvelope(v1)
	if err != nil {
		t.Fatalf("version 1: %v", err)
	}
	if got.stream != 0 || got.seq != 0 || got.event != e.event || !bytes.Equal(got.body, e.body) || got.exclude != e.exclude {
		t.Errorf("version 1 decoded as %+v", got)
	}
}
