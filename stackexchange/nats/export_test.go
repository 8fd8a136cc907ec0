package nats

import "github.com/neffos-contrib/scaleout"

// Engine returns the engine of s, for this package's tests: ChannelOf and
// NodeID name the subjects a test publishes garbage on or counts.
func Engine(s *StackExchange) *scaleout.Exchange { return s.engine() }
