package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/go-redis/redis/v8"

	"github.com/neffos-contrib/scaleout"
)

// Redis Cluster support.
//
// go-redis v8 cannot parse Redis 7's CLUSTER SLOTS reply (each node has a
// fourth element, its metadata): every command of a ClusterClient fails
// with "got 4 elements in cluster info address, expected 2 or 3".
// ClusterOptions.ClusterSlots routes around it: NewClusterClient sets it to
// a function that reads CLUSTER SLOTS itself and tolerates extra elements.
// NewStackExchange with Config.Clusters does that for its own client; a
// user who builds the client calls NewClusterClient instead of go-redis's.

// NewClusterClient is goredis.NewClusterClient that also works with Redis
// 7+: when opt.ClusterSlots is nil it sets it (on a copy of opt) to a
// function that runs CLUSTER SLOTS on one of the nodes it knows (opt.Addrs
// and every node of the last answer, in random order, each on a connection
// of its own dialled with opt's Dialer, credentials, TLS and timeouts, and
// closed after the answer) and parses the reply whatever the number of
// elements per node.
//
// go-redis routes commands to replicas (ReadOnly) only when ClusterSlots is
// nil; the exchange never reads from replicas.
func NewClusterClient(opt *goredis.ClusterOptions) *goredis.ClusterClient {
	o := *opt
	if o.ClusterSlots == nil {
		o.ClusterSlots = newSlotsReader(&o).read
	}
	return goredis.NewClusterClient(&o)
}

// errRedis7Slots is how go-redis v8 fails on Redis 7's CLUSTER SLOTS.
const errRedis7Slots = "elements in cluster info address"

// clusterHint adds how to fix it to go-redis v8's CLUSTER SLOTS error.
func clusterHint(err error) error {
	if err != nil && strings.Contains(err.Error(), errRedis7Slots) && !strings.Contains(err.Error(), "redis.NewClusterClient") {
		return fmt.Errorf("%w (go-redis v8 cannot read Redis 7's CLUSTER SLOTS: build the client with redis.NewClusterClient instead of goredis.NewClusterClient)", err)
	}
	return err
}

// slotsReader reads CLUSTER SLOTS for a ClusterClient.
type slotsReader struct {
	opt   goredis.Options // for one-off connections to a node
	seeds []string

	mu    sync.Mutex
	known []string // the nodes of the last answer
}

func newSlotsReader(o *goredis.ClusterOptions) *slotsReader {
	return &slotsReader{
		seeds: append([]string(nil), o.Addrs...),
		opt: goredis.Options{
			Dialer:             o.Dialer,
			Username:           o.Username,
			Password:           o.Password,
			DialTimeout:        o.DialTimeout,
			ReadTimeout:        o.ReadTimeout,
			WriteTimeout:       o.WriteTimeout,
			TLSConfig:          o.TLSConfig,
			MaxRetries:         -1,
			PoolSize:           1,
			IdleCheckFrequency: -1, // no reaper goroutine: the client lives for one command
		},
	}
}

// read implements ClusterOptions.ClusterSlots.
func (r *slotsReader) read(ctx context.Context) ([]goredis.ClusterSlot, error) {
	r.mu.Lock()
	addrs := append(append([]string(nil), r.seeds...), r.known...)
	r.mu.Unlock()
	seen := make(map[string]bool, len(addrs))
	var firstErr error
	for _, i := range rand.Perm(len(addrs)) {
		addr := addrs[i]
		if seen[addr] {
			continue
		}
		seen[addr] = true
		if ctx.Err() != nil {
			break
		}
		slots, err := r.readFrom(ctx, addr)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		var known []string
		for _, s := range slots {
			for _, n := range s.Nodes {
				known = append(known, n.Addr)
			}
		}
		r.mu.Lock()
		r.known = known
		r.mu.Unlock()
		return slots, nil
	}
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return nil, fmt.Errorf("scaleout/redis: CLUSTER SLOTS: %w", firstErr)
}

func (r *slotsReader) readFrom(ctx context.Context, addr string) ([]goredis.ClusterSlot, error) {
	opt := r.opt
	opt.Addr = addr
	c := goredis.NewClient(&opt)
	defer c.Close()
	v, err := c.Do(ctx, "CLUSTER", "SLOTS").Slice()
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	return parseSlots(v, host)
}

// parseSlots parses a CLUSTER SLOTS reply: per range its first and last
// slot, then its nodes, master first, each as host, port, id and (Redis 7)
// more elements, which are ignored. A node without a usable host ("" or
// "?": Redis does not know how it is reached) is reached at the host that
// answered.
func parseSlots(v []interface{}, answeredBy string) ([]goredis.ClusterSlot, error) {
	slots := make([]goredis.ClusterSlot, 0, len(v))
	for _, e := range v {
		r, ok := e.([]interface{})
		if !ok || len(r) < 3 {
			return nil, fmt.Errorf("scaleout/redis: CLUSTER SLOTS: unexpected range %v", e)
		}
		start, ok1 := r[0].(int64)
		end, ok2 := r[1].(int64)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("scaleout/redis: CLUSTER SLOTS: unexpected range %v", e)
		}
		s := goredis.ClusterSlot{Start: int(start), End: int(end)}
		for _, n := range r[2:] {
			f, ok := n.([]interface{})
			if !ok || len(f) < 2 {
				return nil, fmt.Errorf("scaleout/redis: CLUSTER SLOTS: unexpected node %v", n)
			}
			host, _ := f[0].(string)
			port, ok := f[1].(int64)
			if !ok {
				return nil, fmt.Errorf("scaleout/redis: CLUSTER SLOTS: unexpected node %v", n)
			}
			if host == "" || host == "?" {
				host = answeredBy
			}
			node := goredis.ClusterNode{Addr: net.JoinHostPort(host, strconv.FormatInt(port, 10))}
			if len(f) > 2 {
				node.ID, _ = f[2].(string)
			}
			s.Nodes = append(s.Nodes, node)
		}
		slots = append(slots, s)
	}
	return slots, nil
}

// mastersTTL is how long the broker reuses its list of a cluster's masters
// before it asks again (it asks only when it needs another node: a failed
// publish, a lost pub/sub connection).
const mastersTTL = time.Second

// masters is a cluster client's masters, cached for mastersTTL.
type masters struct {
	client *goredis.ClusterClient

	mu      sync.Mutex
	list    []*goredis.Client
	fetched time.Time
	pub     *goredis.Client // the master to publish to; nil until chosen
}

// get returns the cluster's masters in random order.
func (m *masters) get(ctx context.Context) ([]*goredis.Client, error) {
	m.mu.Lock()
	list, fresh := m.list, time.Since(m.fetched) < mastersTTL
	m.mu.Unlock()
	if !fresh || len(list) == 0 {
		var mu sync.Mutex
		var found []*goredis.Client
		err := m.client.ForEachMaster(ctx, func(_ context.Context, c *goredis.Client) error {
			mu.Lock()
			found = append(found, c)
			mu.Unlock()
			return nil
		})
		if err != nil && len(list) == 0 {
			return nil, clusterHint(err)
		}
		if err == nil {
			list = found
			m.mu.Lock()
			m.list, m.fetched = found, time.Now()
			m.mu.Unlock()
		}
	}
	out := append([]*goredis.Client(nil), list...)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out, nil
}

// home returns the master the broker publishes to, choosing one at random
// when it has none.
func (m *masters) home(ctx context.Context) (*goredis.Client, error) {
	m.mu.Lock()
	h := m.pub
	m.mu.Unlock()
	if h != nil {
		return h, nil
	}
	list, err := m.get(ctx)
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, errors.New("scaleout/redis: the cluster has no master")
	}
	m.mu.Lock()
	if m.pub == nil {
		m.pub = list[0]
	}
	h = m.pub
	m.mu.Unlock()
	return h, nil
}

// publish publishes on the home master; when that fails (other than by an
// error reply a retry cannot change), on the other masters in random order
// until one accepts, which becomes home. Any cluster node accepts PUBLISH
// and the cluster bus carries it to every node. A retried PUBLISH that had
// got through is dropped by the receivers (the engine numbers messages).
// With ping, it sends PING instead.
func (m *masters) publish(ctx context.Context, channel string, payload []byte, ping bool) error {
	do := func(c *goredis.Client) error {
		if ping {
			return c.Ping(ctx).Err()
		}
		return c.Publish(ctx, channel, payload).Err()
	}
	h, err := m.home(ctx)
	if err != nil {
		return err
	}
	err = do(h)
	if err == nil || permanent(err) {
		return err
	}
	m.client.ReloadState(ctx) // in the background: the master may be gone
	list, lerr := m.get(ctx)
	if lerr != nil {
		return errors.Join(err, lerr)
	}
	failed := h.Options().Addr
	for _, c := range list {
		if c.Options().Addr == failed {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if e := do(c); e != nil {
			if permanent(e) {
				return e
			}
			continue
		}
		m.mu.Lock()
		if m.pub == h {
			m.pub = c
		}
		m.mu.Unlock()
		return nil
	}
	return err
}

// permanent reports whether err is an error reply that another node would
// give as well.
func permanent(err error) bool {
	return errors.Is(rejected(err), scaleout.ErrRejected)
}
