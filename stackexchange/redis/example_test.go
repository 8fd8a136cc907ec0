package redis_test

import (
	"context"
	"fmt"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout/stackexchange/redis"
)

// The three-line setup, on every node of the app: an exchange on the
// app's Redis, used by the node's neffos server. Broadcasts, To messages
// and Server.Ask then cross every node that uses the same Redis and channel
// prefix (the root package's Example shows a broadcast crossing two nodes).
// Runs against REDIS_ADDR or the redis-server this package's tests start.
func Example() {
	exc, err := redis.NewStackExchange(redis.Config{Addr: redisAddr}, "ExampleApp")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer exc.Close() // neffos v0.0.25's Server.Close does it too; v0.0.24's does not

	server := neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{"chat": neffos.Events{}})
	defer server.Close()
	if err := server.UseStackExchange(exc); err != nil {
		fmt.Println(err)
		return
	}

	// The node subscribed the namespace's channel on Redis in
	// UseStackExchange: it is ready for a load balancer to send it clients.
	fmt.Println("ready:", exc.Ready() == nil)

	// Every live node of the app, this one first (from heartbeats on Redis).
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	n, _, err := exc.Cluster().Count(ctx, "chat", "")
	fmt.Println("nodes:", len(exc.Cluster().Nodes()), "connections in chat:", n, err)
	// Output:
	// ready: true
	// nodes: 1 connections in chat: 0 <nil>
}
