// Package redundancy holds the tests of scaleout.Redundant over real Redis
// and NATS servers: one exchange on both brokers at once. It has no code of
// its own.
package redundancy
