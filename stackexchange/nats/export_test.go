package nats

import (
	"github.com/nats-io/nats.go"

	"github.com/neffos-contrib/scaleout"
)

// NewBroker is the adapter alone, on the user's connection (which it does
// not close), for the package's tests of the scaleout.Broker contract.
func NewBroker(nc *nats.Conn) scaleout.Broker {
	b := newBroker(false)
	b.nc = nc
	return b
}
