package scaleout

import (
	"encoding/binary"
	"fmt"
)

// The wire format between nodes, version 3. One envelope is one broker
// payload:
//
//	offset  size  field
//	0       2     magic "SO"
//	2       1     version (3; versions 1 and 2 are still read: version 2
//	              has no age, version 1 no stream, seq and age either, and
//	              its messages are delivered without duplicate or gap
//	              detection)
//	3       1     kind: 1 broadcast, 2 ask, 3 reply, 4 not-here (an ask's To
//	              is not on the sending node); repair (unsequenced, on node
//	              channels): 5 request, 6 resend, 7 void; 8 heartbeat;
//	              cluster operations: 9 request (on P.ctl), 10 answer
//	4       1     flags: 1 binary, 2 native, 4 error, 8 probe (an ask with To
//	              sent to every node: a node without the client answers
//	              not-here), 16 gone (kind 7: the numbers are no longer
//	              buffered, rather than nothing to deliver)
//	5       -     origin node id     (uvarint length + bytes)
//	        -     id                 (uvarint): ask id for ask and reply
//	        -     stream             (uvarint, version 2): the origin's
//	              sequence stream for this channel; 0: not sequenced
//	        -     seq                (uvarint, version 2): 1, 2, 3, ... within
//	              the stream, in publish order
//	        -     age                (uvarint, version 3): milliseconds from
//	              the stream's start to this number (a receiver that read
//	              the channel before the stream started repairs the
//	              numbers below the first one it gets)
//	        -     namespace          (uvarint length + bytes)
//	        -     room               (uvarint length + bytes)
//	        -     event              (uvarint length + bytes)
//	        -     to                 (uvarint length + bytes)
//	        -     excluded conn id   (uvarint length + bytes)
//	        -     error text         (uvarint length + bytes)
//	        -     body               (the rest of the payload, any bytes)
//
// The repair kinds reuse the fields: a request (5) asks the node it is sent
// to for numbers seq..id of its stream on the channel named in event; a
// resend (6) carries in body one envelope exactly as first published, and
// its channel in event; a void (7) answers numbers seq..id of stream on
// channel event with nothing to deliver (gone: no longer buffered). A
// heartbeat (8) carries in body the node's info (uvarint length + bytes:
// address, uptime, namespaces, Stats), then per stream: channel (uvarint
// length + bytes), stream, last number and age in ms (uvarints). A cluster
// request (9) names its operation in event, its request id in id, its
// arguments in namespace, room, to and body; its answer (10) carries the
// id, the result in body, or an error (flag 4, error text).
//
// Strings are raw bytes: ';', unicode and control characters travel as they
// are. decodeEnvelope is the only decoder; it never panics and rejects
// anything else with an error wrapping ErrMalformed.

const (
	envelopeVersion = 3
	// envelopeV1 is the version before sequence numbers, envelopeV2 the
	// one before stream ages; both still decoded.
	envelopeV1 = 1
	envelopeV2 = 2

	kindBroadcast = 1
	kindAsk       = 2
	kindReply     = 3
	kindNotHere   = 4
	kindRepair    = 5
	kindResend    = 6
	kindVoid      = 7
	kindBeat      = 8

	flagBinary = 1 << 0
	flagNative = 1 << 1
	flagError  = 1 << 2
	flagProbe  = 1 << 3
	flagGone   = 1 << 4

	maxEnvelopeString = 1 << 20 // per string field
)

var envelopeMagic = [2]byte{'S', 'O'}

type envelope struct {
	kind      byte
	flags     byte
	origin    string
	id        uint64
	stream    uint64
	seq       uint64
	age       uint64 // ms from the stream's start to seq
	namespace string
	room      string
	event     string
	to        string
	exclude   string
	errText   string
	body      []byte
}

// appendEnvelope appends the encoding of e to dst.
func appendEnvelope(dst []byte, e *envelope) []byte {
	dst = append(dst, envelopeMagic[0], envelopeMagic[1], envelopeVersion, e.kind, e.flags)
	dst = appendString(dst, e.origin)
	dst = binary.AppendUvarint(dst, e.id)
	dst = binary.AppendUvarint(dst, e.stream)
	dst = binary.AppendUvarint(dst, e.seq)
	dst = binary.AppendUvarint(dst, e.age)
	dst = appendString(dst, e.namespace)
	dst = appendString(dst, e.room)
	dst = appendString(dst, e.event)
	dst = appendString(dst, e.to)
	dst = appendString(dst, e.exclude)
	dst = appendString(dst, e.errText)
	return append(dst, e.body...)
}

func (e *envelope) size() int {
	n := 5 + 4*binary.MaxVarintLen64 + len(e.body)
	for _, s := range [...]string{e.origin, e.namespace, e.room, e.event, e.to, e.exclude, e.errText} {
		n += binary.MaxVarintLen64 + len(s)
	}
	return n
}

func encodeEnvelope(e *envelope) []byte {
	return appendEnvelope(make([]byte, 0, e.size()), e)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decodeEnvelope parses b. The returned envelope does not alias b.
func decodeEnvelope(b []byte) (envelope, error) {
	var e envelope
	if len(b) < 5 {
		return e, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	if b[0] != envelopeMagic[0] || b[1] != envelopeMagic[1] {
		return e, fmt.Errorf("%w: bad magic", ErrMalformed)
	}
	version := b[2]
	if version < envelopeV1 || version > envelopeVersion {
		return e, fmt.Errorf("%w: unsupported version %d", ErrMalformed, version)
	}
	e.kind, e.flags = b[3], b[4]
	if e.kind < kindBroadcast || e.kind > kindControlReply {
		return e, fmt.Errorf("%w: unknown kind %d", ErrMalformed, e.kind)
	}
	if e.flags&^(flagBinary|flagNative|flagError|flagProbe|flagGone) != 0 {
		return e, fmt.Errorf("%w: unknown flags %#x", ErrMalformed, e.flags)
	}
	r := reader{b: b[5:]}
	e.origin = r.string()
	e.id = r.uvarint()
	if version >= 2 {
		e.stream = r.uvarint()
		e.seq = r.uvarint()
	}
	if version >= 3 {
		e.age = r.uvarint()
	}
	e.namespace = r.string()
	e.room = r.string()
	e.event = r.string()
	e.to = r.string()
	e.exclude = r.string()
	e.errText = r.string()
	if r.err != "" {
		return envelope{}, fmt.Errorf("%w: %s", ErrMalformed, r.err)
	}
	if e.origin == "" {
		return envelope{}, fmt.Errorf("%w: no origin", ErrMalformed)
	}
	if len(r.b) > 0 {
		e.body = append([]byte(nil), r.b...)
	}
	return e, nil
}

type reader struct {
	b   []byte
	err string
}

func (r *reader) uvarint() uint64 {
	if r.err != "" {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = "bad varint"
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string {
	n := r.uvarint()
	if r.err != "" {
		return ""
	}
	if n > maxEnvelopeString || n > uint64(len(r.b)) {
		r.err = "string length out of range"
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
