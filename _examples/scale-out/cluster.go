package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kataras/neffos"

	"github.com/neffos-contrib/scaleout"
)

// The cluster endpoints: what every node can tell about all of them,
// through the exchange's Cluster operations (no bookkeeping of our own).
//
//	GET  /cluster/nodes                  Cluster.Nodes: the live nodes and their numbers
//	GET  /cluster/presence?ns=chat       Cluster.Conns: who is connected to ns, by node
//	POST /cluster/disconnect?id=ID&by=ME Cluster.Disconnect: close ID on whichever node holds it
//
// Every call is bounded by clusterTimeout. A node that does not answer in
// time is named in the answer ("missing"); the others' answers are still
// returned.
//
// Names: a connection's id is "<name>@<node>" (chat.connID), so a user's
// name comes with the id that Cluster.Conns lists, on whichever node holds
// the connection, and nothing else has to be asked. Node names travel in
// scaleout.Options.Addr, which each node sets to "<name> <page URL>" and
// which every node's heartbeat carries (nodeAddr, parseAddr).
//
// The disconnect endpoint is an admin action with no authentication: this
// is a demo. A real application puts it behind its own admin login. It only
// accepts same-origin POSTs (http.CrossOriginProtection), so another site
// cannot make a visitor's browser call it.

// clusterTimeout bounds every cluster call an endpoint makes.
const clusterTimeout = 2 * time.Second

// kickNoticeTimeout bounds the notice a disconnected user's page gets
// before its connection is closed (part of clusterTimeout).
const kickNoticeTimeout = time.Second

// clusterExchange is an exchange with cluster operations: both adapters'
// StackExchange and *scaleout.Exchange.
type clusterExchange interface {
	scaleout.StackExchange
	Cluster() *scaleout.Cluster
	Ready() error
}

// clusterAPI serves the /cluster/ endpoints of one node.
type clusterAPI struct {
	node    string // this node's name
	cluster *scaleout.Cluster
	server  *neffos.Server
}

func (a *clusterAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /cluster/nodes", a.nodes)
	mux.HandleFunc("GET /cluster/presence", a.presence)
	mux.Handle("POST /cluster/disconnect", http.NewCrossOriginProtection().Handler(http.HandlerFunc(a.disconnect)))
	mux.HandleFunc("/cluster/disconnect", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, errJSON{"POST only"})
	})
}

// nodeAddr is the scaleout.Options.Addr of a node: its name and the URL of
// its page, readable as it is in Cluster.Nodes.
func nodeAddr(name, pageURL string) string { return name + " " + pageURL }

// parseAddr splits what nodeAddr joined; a node that set no Addr (another
// app on the same prefix) is named by its id.
func parseAddr(n scaleout.Node) (name, url string) {
	name, url, _ = strings.Cut(n.Addr, " ")
	if name == "" {
		name = n.ID
	}
	return name, url
}

// nodeRef names a node: the exchange's node id, and the chat's node name.
type nodeRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type nodeJSON struct {
	nodeRef
	URL           string    `json:"url,omitempty"`
	Self          bool      `json:"self"`
	Conns         int       `json:"conns"`
	Namespaces    []string  `json:"namespaces"`
	UptimeSeconds int64     `json:"uptimeSeconds"`
	LastSeenMs    int64     `json:"lastSeenMs"` // since its last heartbeat
	Stats         statsJSON `json:"stats"`
}

// statsJSON is a few of the node's scaleout.Stats.
type statsJSON struct {
	Published     uint64 `json:"published"`
	Received      uint64 `json:"received"`
	Delivered     uint64 `json:"delivered"`
	Dropped       uint64 `json:"dropped"`
	Missed        uint64 `json:"missed"`
	Subscriptions int    `json:"subscriptions"`
	Queued        int    `json:"queued"`
	PendingAsks   int    `json:"pendingAsks"`
}

// liveNodes returns Cluster.Nodes (this node first, then by name) as JSON
// values. It asks nobody: heartbeats keep every node's table.
func (a *clusterAPI) liveNodes() []nodeJSON {
	now := time.Now()
	var out []nodeJSON
	for _, n := range a.cluster.Nodes() {
		name, url := parseAddr(n)
		s := n.Stats
		out = append(out, nodeJSON{
			nodeRef:       nodeRef{ID: n.ID, Name: name},
			URL:           url,
			Self:          n.Self,
			Conns:         n.Conns,
			Namespaces:    n.Namespaces,
			UptimeSeconds: int64(n.Uptime / time.Second),
			LastSeenMs:    now.Sub(n.LastSeen).Milliseconds(),
			Stats: statsJSON{
				Published: s.Published, Received: s.Received, Delivered: s.Delivered,
				Dropped: s.Dropped, Missed: s.Missed, Subscriptions: s.Subscriptions,
				Queued: s.Queued, PendingAsks: s.PendingAsks,
			},
		})
	}
	if len(out) > 1 {
		rest := out[1:]
		sort.Slice(rest, func(i, j int) bool { return rest[i].Name < rest[j].Name })
	}
	return out
}

func (a *clusterAPI) nodes(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		Self  string     `json:"self"`
		Nodes []nodeJSON `json:"nodes"`
	}{a.node, a.liveNodes()})
}

type userJSON struct {
	ID    string   `json:"id"`
	Name  string   `json:"name"`
	Rooms []string `json:"rooms"`
}

type presenceNode struct {
	nodeRef
	Self bool `json:"self"`
	// Answered is false for a live node that did not answer in time: its
	// users are unknown, not absent.
	Answered bool       `json:"answered"`
	Users    []userJSON `json:"users"`
}

type presenceJSON struct {
	Namespace string         `json:"namespace"`
	Self      string         `json:"self"`
	Nodes     []presenceNode `json:"nodes"`
	Total     int            `json:"total"`
	Missing   []nodeRef      `json:"missing"`
	Error     string         `json:"error,omitempty"`
}

// presence lists who is connected to the namespace ?ns= (default chat) on
// every node, grouped by node: one Cluster.Conns call, bounded by
// clusterTimeout. It always answers 200 with what it has: the nodes that did
// not answer are in "missing" (and "error" says why).
func (a *clusterAPI) presence(w http.ResponseWriter, r *http.Request) {
	ns := r.URL.Query().Get("ns")
	if ns == "" {
		ns = chatNamespaces[0]
	}
	if !slices.Contains(chatNamespaces, ns) {
		writeJSON(w, http.StatusBadRequest, errJSON{"unknown namespace " + ns})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), clusterTimeout)
	defer cancel()
	p, err := a.cluster.Conns(ctx, ns, "")

	out := presenceJSON{Namespace: ns, Self: a.node, Missing: []nodeRef{}}
	if err != nil {
		out.Error = err.Error()
	}
	missing := map[string]bool{}
	for _, id := range p.Missing {
		missing[id] = true
	}
	byID := map[string]*presenceNode{}
	for _, n := range a.liveNodes() {
		out.Nodes = append(out.Nodes, presenceNode{nodeRef: n.nodeRef, Self: n.Self, Answered: !missing[n.ID], Users: []userJSON{}})
		if missing[n.ID] {
			out.Missing = append(out.Missing, n.nodeRef)
		}
	}
	for i := range out.Nodes {
		byID[out.Nodes[i].ID] = &out.Nodes[i]
	}
	for _, c := range p.Conns {
		g := byID[c.Node]
		if g == nil {
			// It answered, but its first heartbeat has not reached this
			// node yet: name it after its users' ids.
			_, name := splitID(c.ID)
			out.Nodes = append(out.Nodes, presenceNode{nodeRef: nodeRef{ID: c.Node, Name: name}, Answered: true, Users: []userJSON{}})
			for i := range out.Nodes {
				byID[out.Nodes[i].ID] = &out.Nodes[i]
			}
			g = byID[c.Node]
		}
		name, _ := splitID(c.ID)
		rooms := c.Rooms[ns]
		if rooms == nil {
			rooms = []string{}
		}
		g.Users = append(g.Users, userJSON{ID: c.ID, Name: name, Rooms: rooms})
		out.Total++
	}
	for _, id := range p.Missing {
		if byID[id] == nil {
			out.Missing = append(out.Missing, nodeRef{ID: id, Name: id})
		}
	}
	for i := range out.Nodes {
		u := out.Nodes[i].Users
		sort.Slice(u, func(i, j int) bool { return u[i].ID < u[j].ID })
	}
	writeJSON(w, http.StatusOK, out)
}

// splitID splits a connection id "<name>@<node>" (chat.connID).
func splitID(id string) (name, node string) {
	i := strings.LastIndexByte(id, '@')
	if i < 0 {
		return id, ""
	}
	return id[:i], id[i+1:]
}

// disconnect closes the connection ?id= on whichever node holds it, with
// Cluster.Disconnect. First, within kickNoticeTimeout, the user's page is
// told who did it (event "kicked", a Server.Ask To its id, so the notice
// is on the page before the socket closes; a client that does not answer
// costs that second, no more). ?by= is the admin's own id, for the notice.
//
// 200: closed. 404: no node holds id. 504: a node did not answer in time
// (it may hold id). 400: no id.
func (a *clusterAPI) disconnect(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if id == "" || len(id) > 128 {
		writeJSON(w, http.StatusBadRequest, errJSON{"want ?id=<connection id>"})
		return
	}
	by := r.URL.Query().Get("by")
	if len(by) > 128 {
		by = by[:128]
	}
	ctx, cancel := context.WithTimeout(r.Context(), clusterTimeout)
	defer cancel()

	notice, _ := json.Marshal(event{From: by, Node: a.node, To: id})
	askCtx, askCancel := context.WithTimeout(ctx, kickNoticeTimeout)
	_, askErr := a.server.Ask(askCtx, neffos.Message{Namespace: chatNamespaces[0], Event: evKicked, To: id, Body: notice})
	askCancel()

	err := a.cluster.Disconnect(ctx, id)
	_, holder := splitID(id)
	res := struct {
		OK     bool   `json:"ok"`
		ID     string `json:"id"`
		Node   string `json:"node,omitempty"` // the node that held it
		Via    string `json:"via"`            // the node that was asked
		Notice bool   `json:"notice"`         // the page acknowledged the notice
		Error  string `json:"error,omitempty"`
	}{OK: err == nil, ID: id, Via: a.node, Notice: askErr == nil}
	status := http.StatusOK
	switch {
	case err == nil:
		res.Node = holder
	case errors.Is(err, scaleout.ErrConnNotFound):
		status = http.StatusNotFound
	case errors.Is(err, context.DeadlineExceeded):
		status = http.StatusGatewayTimeout
	default:
		status = http.StatusBadGateway
	}
	if err != nil {
		res.Error = err.Error()
	}
	writeJSON(w, status, res)
}

type errJSON struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
