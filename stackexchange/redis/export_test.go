package redis

import (
	goredis "github.com/go-redis/redis/v8"

	"github.com/neffos-contrib/scaleout"
)

// NewBroker is the adapter alone, on the user's client (which it does not
// close), for the package's tests of the scaleout.Broker contract.
func NewBroker(client goredis.UniversalClient) scaleout.Broker {
	return newBroker(client, false, "", false)
}

// SubscribeChunk is how many channels one SUBSCRIBE command carries.
const SubscribeChunk = subscribeChunk
