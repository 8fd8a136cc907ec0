package scaleout

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Channel names. For a prefix P:
//
//	P.ns.<token(namespace)>   one per namespace, subscribed by every node
//	P.c.<token(connID)>       one per connected client id, by the node holding it
//	P.node.<nodeID>           one per node: Ask replies
//	P.hb                      subscribed by every node: heartbeats
//	P.ctl                     subscribed by every node: cluster requests
//	P.probe                   subscribed by nobody: a node publishes nothing
//	                          there once, at start, to learn whether the
//	                          broker counts receivers
//
// token is injective: bytes [A-Za-z0-9-] stay, every other byte becomes '_'
// followed by two lower-case hex digits, and the empty string becomes a lone
// "_" (which no non-empty name produces). A token longer than maxToken bytes
// is replaced by '~' and the SHA-256 of the name ('~' appears in no other
// token); receivers still compare the full name carried in the envelope, so
// even a hash collision could not deliver to the wrong namespace or client.
// No token contains '.', '*', '>' or white space, so no name can act as a
// NATS wildcard or reach into another name's channel.

const maxToken = 200

func token(s string) string {
	if s == "" {
		return "_"
	}
	var b strings.Builder
	b.Grow(len(s))
	const hexdigits = "0123456789abcdef"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
			b.WriteByte(hexdigits[c>>4])
			b.WriteByte(hexdigits[c&0xf])
		}
		if b.Len() > maxToken {
			sum := sha256.Sum256([]byte(s))
			return "~" + hex.EncodeToString(sum[:])
		}
	}
	return b.String()
}

// prefixName returns p as a channel prefix: p itself when it is a valid
// literal NATS subject made of safe bytes, its token otherwise.
func prefixName(p string) string {
	if p == "" {
		p = "neffos"
	}
	for _, part := range strings.Split(p, ".") {
		if part == "" {
			return token(p)
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return token(p)
			}
		}
	}
	return p
}

type names struct{ prefix string }

func (n names) namespace(ns string) string { return n.prefix + ".ns." + token(ns) }
func (n names) conn(id string) string      { return n.prefix + ".c." + token(id) }
func (n names) node(id string) string      { return n.prefix + ".node." + id }
func (n names) probe() string              { return n.prefix + ".probe" }
func (n names) beat() string               { return n.prefix + ".hb" }
func (n names) control() string            { return n.prefix + ".ctl" }
