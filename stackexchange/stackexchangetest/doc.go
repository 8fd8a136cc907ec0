// Package stackexchangetest is the conformance suite for neffos
// StackExchanges, in the manner of testing/fstest: Run starts several
// in-process neffos nodes, each with its own exchange, connects real neffos
// Go clients over real websockets, and checks every scale-out rule as a
// named subtest.
//
//	func TestConformance(t *testing.T) {
//		stackexchangetest.Run(t, func(t testing.TB, channel string, opts scaleout.Options) neffos.StackExchange {
//			exc, err := redis.NewStackExchangeOptions(redis.Config{Addr: addr}, channel, opts)
//			if err != nil {
//				t.Fatal(err)
//			}
//			return exc
//		})
//	}
//
// The rules (Run lists them by name): broadcast to a namespace,
// a room and one connection; exclusions by *Conn, *NSConn and
// neffos.Exclude(id) from any node; binary, error and native messages; names
// with ';', unicode and spaces; Server.Ask with and without To, its deadline
// and its fast failure for an unknown client; client emits unchanged;
// resources released on disconnect; 500 fresh clients that each get a
// broadcast sent the moment their Connect returned; and with 300 clients on
// 3 nodes, at most 3 broker connections per node and one namespace
// subscription per node (when the exchange has the BrokerConns and
// NamespaceSubscribers methods of scaleout.Exchange); broadcasts from
// neffos's leave handlers, slow error handlers, a restarted node; errors
// that wrap scaleout's sentinels; an exchange used from several goroutines
// as it starts; a bounded, counted backlog under a flood to a stalled
// client. RunFaults, RunRedundancyFaults and
// RunClusterFaults add the rules that kill or pause broker processes the
// test owns (one Process interface for every backend). RunBroker checks a
// scaleout.Broker on its own, for adapter authors.
//
// A rule passes engine options to the factory (opts: an ErrorHandler, a
// Logger, a small QueueSize; the zero value for most rules). Rules also
// cover user code that calls back into the exchange while nodes are busy:
// "X left" broadcast with Broadcast(nsConn, ...) from OnRoomLeft and
// OnNamespaceDisconnect during thousands of connect/leave cycles, and a
// slow ErrorHandler and Logger that read Stats during a slow-consumer
// episode and a connect storm; a Broadcast that both excludes a client and
// is To it reaches nobody; an error registered with neffos.RegisterKnownError
// comes back from Server.Ask as that error.
package stackexchangetest
