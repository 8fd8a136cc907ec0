package brokertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	goredis "github.com/go-redis/redis/v8"
)

// Redis topologies a test starts for itself: a Redis Cluster and a Sentinel
// setup, every process a *Redis of its own (so each one satisfies
// stackexchangetest.Process: Kill, Restart), on free loopback ports. Their
// readiness checks ask the servers, with deadlines; nothing sleeps.

// ClusterNodeTimeout is the cluster-node-timeout of StartRedisCluster's
// nodes: how long a master may be unreachable before its replica takes
// over (the failover follows within about another second).
const ClusterNodeTimeout = time.Second

// SentinelDownAfter is down-after-milliseconds of StartRedisSentinel's
// sentinels: how long the master may be unreachable before a failover
// starts.
const SentinelDownAfter = time.Second

// RedisCluster is a Redis Cluster of redis-server processes started by a
// test. Nodes[:Masters] were created as masters and the rest as their
// replicas; after a failover the roles change, so ask Master for the
// current owner of a key.
type RedisCluster struct {
	Nodes   []*Redis
	Masters int
}

// StartRedisCluster starts masters*(1+replicas) cluster-enabled
// redis-servers, creates the cluster with redis-cli --cluster create (slots
// spread evenly over the masters, replicas masters' replicas each) and
// waits until it is ready (see Ready), at most 30 s.
func StartRedisCluster(masters, replicas int) (*RedisCluster, error) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("redis-cli not on PATH (apt-get install redis-tools): %w", err)
	}
	c := &RedisCluster{Masters: masters}
	for range masters * (1 + replicas) {
		bus, err := FreePort()
		if err != nil {
			c.Stop()
			return nil, err
		}
		r, err := StartRedis("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-node-timeout", strconv.Itoa(int(ClusterNodeTimeout/time.Millisecond)),
			"--cluster-replica-validity-factor", "0")
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Nodes = append(c.Nodes, r)
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	if err := c.Ready(30 * time.Second); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Addrs returns every node's address (the seeds a client is given).
func (c *RedisCluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// Stop stops every node. It is idempotent.
func (c *RedisCluster) Stop() {
	for _, n := range c.Nodes {
		n.Stop()
	}
}

// Node returns the node listening on addr, or nil.
func (c *RedisCluster) Node(addr string) *Redis {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// running returns the nodes whose process runs.
func (c *RedisCluster) running() []*Redis {
	var rs []*Redis
	for _, n := range c.Nodes {
		if n.PID() != 0 {
			rs = append(rs, n)
		}
	}
	return rs
}

// Ready waits at most d until every running node reports cluster_state:ok,
// every slot is served by a running master (in the view of every running
// node), and every running replica's link to its master is up.
func (c *RedisCluster) Ready(d time.Duration) error {
	return poll(nil, d, func(ctx context.Context) error {
		for _, n := range c.running() {
			info, err := query(ctx, n.Addr, "CLUSTER", "INFO")
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("%s: cluster_state is not ok", n.Addr)
			}
			owners, replica, err := clusterView(ctx, n.Addr)
			if err != nil {
				return err
			}
			slots := 0
			for addr, n := range owners {
				if node := c.Node(addr); node == nil || node.PID() == 0 {
					return fmt.Errorf("slots served by %s, which is down", addr)
				}
				slots += n
			}
			if slots != 16384 {
				return fmt.Errorf("%s sees %d of 16384 slots served", n.Addr, slots)
			}
			if replica {
				repl, err := query(ctx, n.Addr, "INFO", "replication")
				if err != nil {
					return err
				}
				if !strings.Contains(repl, "master_link_status:up") {
					return fmt.Errorf("replica %s: link to its master is not up", n.Addr)
				}
			}
		}
		return nil
	})
}

// Master returns the node that currently serves key's slot as master, in
// the view of the first running node.
func (c *RedisCluster) Master(key string) (*Redis, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range c.running() {
		cl := adminClient(n.Addr)
		slot, err := cl.ClusterKeySlot(ctx, key).Result()
		var slots []goredis.ClusterSlot
		if err == nil {
			slots, err = clusterSlots(ctx, cl)
		}
		cl.Close()
		if err != nil {
			continue
		}
		for _, s := range slots {
			if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
				if node := c.Node(s.Nodes[0].Addr); node != nil {
					return node, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("brokertest: no running node knows the master of %q", key)
}

// clusterSlots reads CLUSTER SLOTS as raw values (go-redis v8 cannot parse
// Redis 7's reply): the master first in each range's Nodes.
func clusterSlots(ctx context.Context, cl *goredis.Client) ([]goredis.ClusterSlot, error) {
	v, err := cl.Do(ctx, "CLUSTER", "SLOTS").Slice()
	if err != nil {
		return nil, err
	}
	var slots []goredis.ClusterSlot
	for _, e := range v {
		r, ok := e.([]interface{})
		if !ok || len(r) < 3 {
			return nil, fmt.Errorf("brokertest: CLUSTER SLOTS entry %v", e)
		}
		start, _ := r[0].(int64)
		end, _ := r[1].(int64)
		s := goredis.ClusterSlot{Start: int(start), End: int(end)}
		for _, n := range r[2:] {
			f, ok := n.([]interface{})
			if !ok || len(f) < 2 {
				return nil, fmt.Errorf("brokertest: CLUSTER SLOTS node %v", n)
			}
			host, _ := f[0].(string)
			port, _ := f[1].(int64)
			s.Nodes = append(s.Nodes, goredis.ClusterNode{Addr: host + ":" + strconv.FormatInt(port, 10)})
		}
		slots = append(slots, s)
	}
	return slots, nil
}

// clusterView parses addr's CLUSTER NODES: how many slots each master
// serves, and whether addr itself is a replica.
func clusterView(ctx context.Context, addr string) (owners map[string]int, replica bool, err error) {
	text, err := query(ctx, addr, "CLUSTER", "NODES")
	if err != nil {
		return nil, false, err
	}
	owners = map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		node, _, _ := strings.Cut(f[1], "@")
		flags := strings.Split(f[2], ",")
		has := func(flag string) bool {
			for _, x := range flags {
				if x == flag {
					return true
				}
			}
			return false
		}
		if has("myself") && has("slave") {
			replica = true
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being migrated
			}
			lo, hi, ok := strings.Cut(r, "-")
			if !ok {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil {
				continue
			}
			owners[node] += b - a + 1
		}
	}
	return owners, replica, nil
}

// SentinelMaster is the master name StartRedisSentinel's sentinels monitor.
const SentinelMaster = "mymaster"

// RedisSentinel is a Sentinel setup started by a test: two data servers,
// Data[0] started as the master and Data[1] as its replica, and sentinels
// monitoring them as SentinelMaster with a quorum of 2. After a failover
// the roles change; ask Master.
type RedisSentinel struct {
	Data      []*Redis
	Sentinels []*Redis
}

// StartRedisSentinel starts one master, one replica and three sentinels,
// and waits until they are ready (see Ready), at most 30 s.
func StartRedisSentinel() (*RedisSentinel, error) {
	s := &RedisSentinel{}
	master, err := StartRedis()
	if err != nil {
		return nil, err
	}
	s.Data = append(s.Data, master)
	replica, err := StartRedis("--replicaof", "127.0.0.1", strconv.Itoa(master.Port))
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.Data = append(s.Data, replica)
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		s.Stop()
		return nil, err
	}
	for range 3 {
		port, err := FreePort()
		if err != nil {
			s.Stop()
			return nil, err
		}
		dir, err := os.MkdirTemp("", "scaleout-sentinel-")
		if err != nil {
			s.Stop()
			return nil, err
		}
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
			"sentinel down-after-milliseconds %[1]s %[3]d\n"+
			"sentinel failover-timeout %[1]s 10000\n"+
			"sentinel parallel-syncs %[1]s 1\n", SentinelMaster, master.Port, SentinelDownAfter/time.Millisecond)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			os.RemoveAll(dir)
			s.Stop()
			return nil, err
		}
		r, err := launch(bin, port, dir, []string{conf, "--sentinel", "--port", strconv.Itoa(port),
			"--bind", "127.0.0.1", "--dir", dir, "--logfile", filepath.Join(dir, "redis.log")})
		if err != nil {
			s.Stop()
			return nil, err
		}
		s.Sentinels = append(s.Sentinels, r)
	}
	if err := s.Ready(30 * time.Second); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// SentinelAddrs returns the sentinels' addresses.
func (s *RedisSentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.Sentinels))
	for i, n := range s.Sentinels {
		addrs[i] = n.Addr
	}
	return addrs
}

// Stop stops every process. It is idempotent.
func (s *RedisSentinel) Stop() {
	for _, r := range append(append([]*Redis(nil), s.Sentinels...), s.Data...) {
		r.Stop()
	}
}

// Master returns the data server that the running sentinels agree is the
// master.
func (s *RedisSentinel) Master() (*Redis, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr, err := s.agreedMaster(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range s.Data {
		if d.Addr == addr {
			return d, nil
		}
	}
	return nil, fmt.Errorf("brokertest: the sentinels name %s, not one of ours", addr)
}

func (s *RedisSentinel) agreedMaster(ctx context.Context) (string, error) {
	agreed := ""
	for _, sn := range s.Sentinels {
		if sn.PID() == 0 {
			continue
		}
		sc := goredis.NewSentinelClient(&goredis.Options{Addr: sn.Addr, MaxRetries: -1})
		a, err := sc.GetMasterAddrByName(ctx, SentinelMaster).Result()
		sc.Close()
		if err != nil {
			return "", fmt.Errorf("sentinel %s: %w", sn.Addr, err)
		}
		addr := strings.Join(a, ":")
		if agreed != "" && addr != agreed {
			return "", fmt.Errorf("sentinels disagree: %s, %s", agreed, addr)
		}
		agreed = addr
	}
	if agreed == "" {
		return "", errors.New("brokertest: no sentinel runs")
	}
	return agreed, nil
}

// Ready waits at most d until the running sentinels agree on a running
// master, which answers as a master with every other running data server
// as a connected replica, and each sentinel sees that master healthy, its
// replicas, and the other running sentinels.
func (s *RedisSentinel) Ready(d time.Duration) error {
	return poll(nil, d, func(ctx context.Context) error {
		addr, err := s.agreedMaster(ctx)
		if err != nil {
			return err
		}
		var master *Redis
		replicas := 0
		for _, r := range s.Data {
			if r.Addr == addr {
				master = r
			} else if r.PID() != 0 {
				replicas++
			}
		}
		if master == nil || master.PID() == 0 {
			return fmt.Errorf("the sentinels name %s, which is down", addr)
		}
		repl, err := query(ctx, addr, "INFO", "replication")
		if err != nil {
			return err
		}
		if !strings.Contains(repl, "role:master") {
			return fmt.Errorf("%s is not a master yet", addr)
		}
		if up := strings.Count(repl, "state=online"); up < replicas {
			return fmt.Errorf("%s has %d online replicas, want %d", addr, up, replicas)
		}
		sentinels := 0
		for _, sn := range s.Sentinels {
			if sn.PID() != 0 {
				sentinels++
			}
		}
		for _, sn := range s.Sentinels {
			if sn.PID() == 0 {
				continue
			}
			sc := goredis.NewSentinelClient(&goredis.Options{Addr: sn.Addr, MaxRetries: -1})
			m, err := sc.Master(ctx, SentinelMaster).Result()
			if err != nil {
				sc.Close()
				return err
			}
			if m["flags"] != "master" {
				sc.Close()
				return fmt.Errorf("sentinel %s: master flags %q", sn.Addr, m["flags"])
			}
			healthy := 0
			if reps, err := sc.Slaves(ctx, SentinelMaster).Result(); err == nil {
				for _, r := range reps {
					f, _ := r.([]interface{})
					for i := 0; i+1 < len(f); i += 2 {
						if f[i] == "flags" && f[i+1] == "slave" {
							healthy++
						}
					}
				}
			}
			if healthy != replicas {
				sc.Close()
				return fmt.Errorf("sentinel %s sees %d healthy replicas, want %d", sn.Addr, healthy, replicas)
			}
			if m["num-other-sentinels"] != strconv.Itoa(sentinels-1) {
				sc.Close()
				return fmt.Errorf("sentinel %s knows %s other sentinels, want %d", sn.Addr, m["num-other-sentinels"], sentinels-1)
			}
			sc.Close()
		}
		return nil
	})
}

func adminClient(addr string) *goredis.Client {
	return goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, PoolSize: 1,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
}

// query runs one command on addr and returns its reply as text.
func query(ctx context.Context, addr string, args ...interface{}) (string, error) {
	cl := adminClient(addr)
	defer cl.Close()
	return cl.Do(ctx, args...).Text()
}

// poll calls check until it returns nil, the process behind exited (nil:
// none) exits, or d passes, and returns its last error then.
func poll(exited <-chan struct{}, d time.Duration, check func(context.Context) error) error {
	deadline := time.Now().Add(d)
	for {
		select {
		case <-exited:
			return errors.New("brokertest: process exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("brokertest: not ready after %v: %w", d, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}
