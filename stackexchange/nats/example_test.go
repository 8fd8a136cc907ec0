package nats_test

import (
	"fmt"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/neffos-contrib/scaleout/stackexchange/nats"
)

// Example registers the NATS exchange with a neffos server. It starts a NATS
// server in-process so that it runs anywhere; an app passes the address of
// its NATS server, e.g. "nats://127.0.0.1:4222".
func Example() {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		fmt.Println("nats server not ready")
		return
	}

	exc, err := nats.NewStackExchange(ns.ClientURL())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer exc.Close()
	exc.SubjectPrefix = "myapp" // optional: one prefix per app sharing the NATS server

	srv := neffos.New(gorilla.DefaultUpgrader, neffos.Namespaces{"chat": neffos.Events{}})
	defer srv.Close()
	if err := srv.UseStackExchange(exc); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(exc.Stats().Subscriptions) // "myapp.ns.chat", this node's own subject, the heartbeats' and the cluster requests'
	// Output:
	// 4
}
