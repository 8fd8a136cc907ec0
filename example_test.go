package scaleout_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/kataras/neffos"
	"github.com/kataras/neffos/gorilla"

	"github.com/neffos-contrib/scaleout"
)

// Two neffos nodes share one in-process MemoryBroker; a broadcast made on
// node A reaches a client connected to node B. With Redis or NATS the only
// change is the exchange's constructor.
func Example() {
	mb := scaleout.NewMemoryBroker()
	events := neffos.Namespaces{"chat": neffos.Events{}}

	startNode := func() (*neffos.Server, string, func()) {
		server := neffos.New(gorilla.DefaultUpgrader, events)
		exc := scaleout.New(mb.Broker(), "example", scaleout.Options{})
		if err := server.UseStackExchange(exc); err != nil {
			panic(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		hs := &http.Server{Handler: server}
		go hs.Serve(ln)
		return server, "ws://" + ln.Addr().String(), func() { server.Close(); exc.Close(); hs.Close() }
	}
	nodeA, _, stopA := startNode()
	defer stopA()
	_, urlB, stopB := startNode()
	defer stopB()

	got := make(chan string, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := neffos.Dial(ctx, gorilla.DefaultDialer, urlB, neffos.Namespaces{
		"chat": neffos.Events{"news": func(_ *neffos.NSConn, m neffos.Message) error {
			got <- string(m.Body)
			return nil
		}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	if _, err := client.Connect(ctx, "chat"); err != nil {
		fmt.Println(err)
		return
	}

	nodeA.Broadcast(nil, neffos.Message{Namespace: "chat", Event: "news", Body: []byte("hello from node A")})
	select {
	case body := <-got:
		fmt.Println("client on node B got:", body)
	case <-ctx.Done():
		fmt.Println("timed out")
	}
	// Output: client on node B got: hello from node A
}
