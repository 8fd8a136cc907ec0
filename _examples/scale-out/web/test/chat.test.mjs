// The chat across nodes, with the real neffos.js client (on `ws`) against
// the running example: 3 nodes, clients on different nodes.
//
//   npm test                 # starts the example itself (go run, or $SCALEOUT_BIN)
//
// Exactly once: every expected message is awaited (with a deadline), then a
// fence is sent: a later chat message from the same sender through the same
// node. Once every client has the fence, each counted message must have
// arrived exactly once, and messages for others not at all.
//
// The cluster endpoints (cluster.go) are read back from another node than
// the clients': presence by namespace and node, the live nodes, and an
// admin disconnect of a client that a third node holds.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startExample, poll, getJSON } from "./harness.mjs";
import { client, fence, isChat, unique } from "./clients.mjs";

describe("scale-out chat with neffos.js clients on several nodes", () => {
  let ex;
  let alice, bob, carol, dave; // node 1, 2, 3, and 1 again
  let all;

  before(async () => {
    ex = await startExample({ nodes: 3 });
    // One at a time, so each is online before the next arrives.
    alice = await client(ex.urls[0], "alice");
    bob = await client(ex.urls[1], "bob");
    carol = await client(ex.urls[2], "carol", ["chat", "support"]);
    dave = await client(ex.urls[0], "dave");
    all = [alice, bob, carol, dave];
  });

  after(async () => {
    for (const c of all ?? []) c.conn.close();
    if (ex) {
      const code = await ex.stop();
      if (process.env.SCALEOUT_BIN) assert.equal(code, 0, `example exit code after SIGINT:\n${ex.output()}`);
    }
  });

  test("each client is connected to the node it dialed", () => {
    assert.deepEqual(
      all.map((c) => c.id),
      all.map((c) => `${c.name}@${c.node}`),
    );
    assert.equal(new Set([alice.node, bob.node, carol.node]).size, 3, "alice, bob, carol on three nodes");
    assert.equal(dave.node, alice.node);
  });

  test("presence crosses nodes: alice on node 1 learns that bob came online on node 2", async () => {
    const e = await alice.until((e) => e.event === "presence" && e.from === bob.id && e.state === "online", "bob online");
    assert.equal(e.node, bob.node);
    // and bob learns of alice, who was there first (her announce, sent To bob).
    await bob.until((e) => e.event === "presence" && e.from === alice.id && e.state === "here", "alice here");
  });

  test("broadcast: a message sent on one node reaches every client on every node exactly once", async () => {
    const fromAlice = unique("hello from alice");
    const fromBob = unique("hello from bob");
    assert.ok(alice.ns.chat.emit("chat", fromAlice));
    assert.ok(bob.ns.chat.emit("chat", fromBob));
    for (const c of all) {
      const a = await c.until(isChat(fromAlice), "alice's broadcast");
      assert.equal(a.from, alice.id);
      assert.equal(a.node, alice.node, "sent through alice's node");
      await c.until(isChat(fromBob), "bob's broadcast");
    }
    await fence(alice, all);
    await fence(bob, all);
    for (const c of all) {
      assert.equal(c.count(isChat(fromAlice)), 1, `${c.name}: alice's message exactly once`);
      assert.equal(c.count(isChat(fromBob)), 1, `${c.name}: bob's message exactly once`);
    }
  });

  test("room: only the members, on two nodes, get a room's messages, exactly once", async () => {
    const room = "lobby";
    const joinedBob = alice.until((e) => e.event === "room" && e.from === bob.id && e.state === "joined", "bob joined");
    const ra = await alice.ns.chat.joinRoom(room);
    const rb = await bob.ns.chat.joinRoom(room);
    await joinedBob; // a room event crossed from node 2 to node 1
    const t1 = unique("room msg from alice");
    const t2 = unique("room msg from bob");
    assert.ok(ra.emit("chat", t1));
    assert.ok(rb.emit("chat", t2));
    const inRoom = (text) => (e) => isChat(text)(e) && e.room === room;
    for (const c of [alice, bob]) {
      await c.until(inRoom(t1), "alice's room message");
      await c.until(inRoom(t2), "bob's room message");
    }
    await fence(alice, all);
    await fence(bob, all);
    for (const c of [alice, bob]) {
      assert.equal(c.count(inRoom(t1)), 1, `${c.name}: alice's room message exactly once`);
      assert.equal(c.count(inRoom(t2)), 1, `${c.name}: bob's room message exactly once`);
    }
    for (const c of [carol, dave]) {
      assert.equal(c.count((e) => e.text === t1 || e.text === t2), 0, `${c.name} is not in the room`);
    }

    // bob leaves: he gets no more of the room's messages.
    assert.equal(await rb.leave(), null);
    const t3 = unique("room msg after bob left");
    assert.ok(ra.emit("chat", t3));
    await alice.until(inRoom(t3), "her own room message");
    await fence(alice, all);
    assert.equal(bob.count((e) => e.text === t3), 0, "bob left the room");
    assert.equal(alice.count(inRoom(t3)), 1);
  });

  test("To: a private message reaches only its target, on another node, exactly once", async () => {
    const text = unique("psst bob");
    assert.ok(alice.ns.chat.emit("private", JSON.stringify({ to: bob.id, text })));
    const p = await bob.until((e) => e.event === "private" && e.text === text, "alice's private message");
    assert.equal(p.from, alice.id);
    assert.equal(p.to, bob.id);
    await fence(alice, all);
    assert.equal(bob.count((e) => e.text === text), 1, "bob: exactly once");
    for (const c of [alice, carol, dave]) assert.equal(c.count((e) => e.text === text), 0, `${c.name} must not get it`);
  });

  test("Server.Ask: carol on node 3 asks bob on node 2; bob's neffos.js reply comes back", async () => {
    const question = unique("are you there?");
    bob.answer = unique("yes, bob here");
    assert.ok(carol.ns.chat.emit("ask", JSON.stringify({ to: bob.id, text: question })));
    const a = await carol.until((e) => e.event === "answer" && e.question === question, "the answer", 15_000);
    assert.equal(a.error, undefined, `ask failed: ${a.error}`);
    assert.equal(a.text, bob.answer);
    assert.equal(a.from, bob.id);
    const q = await bob.until((e) => e.event === "question" && e.text === question, "the question");
    assert.equal(q.from, carol.id);
    assert.equal(q.node, carol.node, "asked by carol's node");
    await fence(carol, all);
    assert.equal(carol.count((e) => e.event === "answer" && e.question === question), 1, "one answer");
    assert.equal(bob.count((e) => e.event === "question" && e.text === question), 1, "bob asked once");
    for (const c of [alice, carol, dave]) {
      assert.equal(c.count((e) => e.event === "question" && e.text === question), 0, `${c.name} was not asked`);
    }
  });

  test("Server.Ask to a client connected nowhere fails instead of hanging", async () => {
    const question = unique("anyone?");
    assert.ok(carol.ns.chat.emit("ask", JSON.stringify({ to: "nobody@nowhere", text: question })));
    const a = await carol.until((e) => e.event === "answer" && e.question === question, "the failed answer", 15_000);
    assert.ok(a.error, "an error instead of an answer");
  });

  test("namespaces: a message in 'support' reaches support's clients only", async () => {
    const sup = await alice.conn.connect("support");
    const text = unique("support question");
    // carol (node 3) is in support; bob and dave are not.
    await carol.until((e) => e.event === "presence" && e.ns === "support" && e.from === alice.id, "alice in support");
    assert.ok(sup.emit("chat", text));
    await carol.until(isChat(text, "support"), "the support message");
    alice.ns.support = sup;
    await fence(alice, [alice, carol], "support");
    assert.equal(carol.count(isChat(text, "support")), 1);
    await fence(alice, all, "chat");
    for (const c of [bob, dave]) assert.equal(c.count((e) => e.text === text), 0, `${c.name} is not in support`);
  });

  // byNode maps each listed connection id to the name of its node group.
  const byNode = (presence) => Object.fromEntries(presence.nodes.flatMap((g) => g.users.map((u) => [u.id, g.name])));
  const presenceOf = (url, ns) => getJSON(`${url}/cluster/presence?ns=${ns}`);

  test("GET /ready: every node ready (broker up, namespace subscriptions confirmed)", async () => {
    for (const url of ex.urls) {
      const r = await poll(
        async () => {
          const res = await fetch(`${url}/ready`);
          return { status: res.status, body: await res.text() };
        },
        (r) => r.status === 200,
        `${url}/ready answers 200`,
      );
      assert.equal(r.body, "ok\n");
    }
  });

  test("GET /cluster/nodes and /cluster/presence: every client, by node, asked of any node", async () => {
    // Nodes learn of each other from heartbeats (once a second).
    const nodes = await poll(
      () => getJSON(`${ex.urls[2]}/cluster/nodes`),
      (r) => r.status === 200 && r.body.nodes.length === 3,
      "three live nodes in node 3's list",
    );
    const list = nodes.body.nodes;
    assert.equal(list[0].self, true, "this node first");
    assert.equal(list[0].name, carol.node);
    assert.deepEqual(list.map((n) => n.name).sort(), [alice.node, bob.node, carol.node].sort());
    for (const n of list) {
      assert.match(n.id, /^[0-9a-f]{16}$/, "the exchange's node id");
      assert.ok(ex.urls.some((u) => n.url === `${u}/`), `${n.name}'s page URL ${n.url} (Options.Addr)`);
      assert.deepEqual(n.namespaces, ["chat", "support"]);
      assert.ok(n.stats.subscriptions > 0, `${n.name} subscribes`);
    }
    const conns = Object.fromEntries(list.map((n) => [n.name, n.conns]));
    await poll(
      () => getJSON(`${ex.urls[2]}/cluster/nodes`),
      (r) => {
        const c = Object.fromEntries(r.body.nodes.map((n) => [n.name, n.conns]));
        return c[alice.node] === 2 && c[bob.node] === 1 && c[carol.node] === 1;
      },
      `connections per node 2/1/1 (now ${JSON.stringify(conns)})`,
    );

    // Presence, asked of node 3 (carol's) and node 2: the four clients of
    // chat on their nodes, the two of support.
    const want = { [alice.id]: alice.node, [dave.id]: alice.node, [bob.id]: bob.node, [carol.id]: carol.node };
    for (const url of [ex.urls[2], ex.urls[1]]) {
      const p = await poll(() => presenceOf(url, "chat"), (r) => r.status === 200 && r.body.total === 4, "four in chat");
      assert.deepEqual(byNode(p.body), want);
      assert.deepEqual(p.body.missing, []);
      assert.equal(p.body.error, undefined);
      const names = Object.fromEntries(p.body.nodes.flatMap((g) => g.users.map((u) => [u.id, u.name])));
      assert.equal(names[alice.id], "alice", "the user's name, from the id");
      const a = p.body.nodes.flatMap((g) => g.users).find((u) => u.id === alice.id);
      assert.deepEqual(a.rooms, ["lobby"], "alice is still in lobby");
    }
    const sup = await presenceOf(ex.urls[1], "support");
    assert.deepEqual(byNode(sup.body), { [alice.id]: alice.node, [carol.id]: carol.node });
    assert.equal((await presenceOf(ex.urls[0], "nope")).status, 400);
  });

  test("POST /cluster/disconnect on node 1 closes a client node 2 holds", async () => {
    const eve = await client(ex.urls[1], "eve");
    all.push(eve);
    assert.equal(eve.node, bob.node);
    await poll(() => presenceOf(ex.urls[0], "chat"), (r) => byNode(r.body)[eve.id] === eve.node, "eve listed by node 1");

    assert.equal((await getJSON(`${ex.urls[0]}/cluster/disconnect?id=${encodeURIComponent(eve.id)}`)).status, 405, "GET");
    assert.equal((await getJSON(`${ex.urls[0]}/cluster/disconnect`, { method: "POST" })).status, 400, "no id");
    const forged = await getJSON(`${ex.urls[0]}/cluster/disconnect?id=${encodeURIComponent(eve.id)}`, {
      method: "POST",
      headers: { Origin: "https://elsewhere.example", "Sec-Fetch-Site": "cross-site" },
    });
    assert.equal(forged.status, 403, "a cross-site POST is refused");
    assert.equal(eve.count((e) => e.event === "kicked"), 0);

    const q = new URLSearchParams({ id: eve.id, by: "admin@test" });
    const res = await getJSON(`${ex.urls[0]}/cluster/disconnect?${q}`, { method: "POST" });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.ok, true);
    assert.equal(res.body.node, eve.node);
    assert.equal(res.body.via, alice.node);
    assert.equal(res.body.notice, true, "eve acknowledged the notice");
    const k = await eve.until((e) => e.event === "kicked", "the notice");
    assert.equal(k.from, "admin@test");
    assert.equal(k.node, alice.node, "through node 1");
    let timer;
    await Promise.race([
      eve.closed,
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("eve's socket still open after 10 s")), 10_000))),
    ]).finally(() => clearTimeout(timer));
    await poll(() => presenceOf(ex.urls[2], "chat"), (r) => r.status === 200 && !(eve.id in byNode(r.body)), "eve gone from node 3's list");

    const again = await getJSON(`${ex.urls[0]}/cluster/disconnect?${q}`, { method: "POST" });
    assert.equal(again.status, 404, "nobody holds eve any more");
    // The others are still connected: a broadcast reaches all of them.
    await fence(bob, [alice, bob, carol, dave]);
  });

  test("a node that stops answering is named in the presence answer; the others' users are still listed", async (t) => {
    if (!ex.pause || ex.brokerArgs().includes("memory")) {
      t.skip("needs a second example process on the same broker");
      return;
    }
    // A fourth node, in a process of its own on the same broker and prefix,
    // with one client; then the process is paused (SIGSTOP): it stays in the
    // others' node lists (until NodeExpiry) but answers nothing.
    const other = await startExample({ nodes: 1, prefix: ex.prefix, brokerArgs: [...ex.brokerArgs(), "-name", "paused"] });
    let frank;
    try {
      frank = await client(other.urls[0], "frank");
      await poll(() => presenceOf(ex.urls[0], "chat"), (r) => byNode(r.body)[frank.id] === "paused", "frank, on the fourth node, listed by node 1");
      other.pause();
      const r = await presenceOf(ex.urls[0], "chat");
      assert.equal(r.status, 200, "a partial answer is still an answer");
      assert.deepEqual(r.body.missing.map((m) => m.name), ["paused"]);
      assert.match(r.body.error, /deadline exceeded/);
      const g = r.body.nodes.find((n) => n.name === "paused");
      assert.equal(g.answered, false);
      assert.deepEqual(g.users, []);
      assert.deepEqual(byNode(r.body), { [alice.id]: alice.node, [dave.id]: alice.node, [bob.id]: bob.node, [carol.id]: carol.node });
    } finally {
      other.resume();
      frank?.conn.close();
      await other.stop();
    }
  });
});
