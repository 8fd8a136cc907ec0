// Package stackexchangetest is the conformance suite for neffos
// StackExchanges, in the manner of testing/fstest: Run starts several
// in-process neffos nodes, each with its own exchange, connects real neffos
// Go clients over real websockets, and checks every scale-out rule as a
// named subtest.
//
//	func TestConformance(t *testing.T) {
//		stackexchangetest.Run(t, func(t testing.TB, channel string) neffos.StackExchange {
//			exc, err := redis.NewStackExchange(redis.Config{Addr: addr}, channel)
//			if err != nil {
//				t.Fatal(err)
//			}
//			return exc
//		})
//	}
//
// The rules are those of the project's DESIGN.md: broadcast to a namespace,
// a room and one connection; exclusions by *Conn, *NSConn and
// neffos.Exclude(id) from any node; binary, error and native messages; names
// with ';', unicode and spaces; Server.Ask with and without To, its deadline
// and its fast failure for an unknown client; client emits unchanged;
// resources released on disconnect; 500 fresh clients that each get a
// broadcast sent the moment their Connect returned; and with 300 clients on
// 3 nodes, at most 3 broker connections per node and one namespace
// subscription per node (when the exchange implements scaleout.Inspector).
package stackexchangetest
