// Through a load balancer, as in docker-compose.yml: nginx (nginx.conf) in
// front of separate one-node processes of the example on one broker. .ci/run
// starts them and sets:
//
//   SCALEOUT_LB_URL    http:// URL of nginx
//   SCALEOUT_LB_NODES  how many nodes nginx balances over
//
// Without SCALEOUT_LB_URL the test is skipped (a failure when CI is set).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { client, fence, isChat, unique } from "./clients.mjs";

const lb = process.env.SCALEOUT_LB_URL;
const nodes = Number(process.env.SCALEOUT_LB_NODES || 3);

if (!lb && process.env.CI) throw new Error("CI is set but SCALEOUT_LB_URL is not: .ci/run starts nginx and the nodes");

describe("scale-out chat behind nginx", { skip: lb ? false : "SCALEOUT_LB_URL not set (see .ci/run)" }, () => {
  const clients = [];

  before(async () => {
    // One at a time: nginx's round robin spreads them over the nodes.
    for (let i = 0; i < 2 * nodes; i++) clients.push(await client(lb, `user${i}`));
  });

  after(() => {
    for (const c of clients) c.conn.close();
  });

  test("the page is served through nginx", async () => {
    const res = await fetch(lb + "/");
    assert.equal(res.status, 200);
    assert.match(await res.text(), /neffos scale-out chat/);
  });

  test("websockets are upgraded through nginx and land on every node", () => {
    const perNode = {};
    for (const c of clients) perNode[c.node] = (perNode[c.node] || 0) + 1;
    assert.equal(Object.keys(perNode).length, nodes, `clients per node: ${JSON.stringify(perNode)}`);
  });

  test("a broadcast, a private message and an Ask cross the nodes behind nginx", async () => {
    const [a] = clients;
    const b = clients.find((c) => c.node !== a.node);
    const text = unique("hello through nginx");
    assert.ok(a.ns.chat.emit("chat", text));
    await Promise.all(clients.map((c) => c.until(isChat(text), "the broadcast")));

    const secret = unique("private through nginx");
    assert.ok(a.ns.chat.emit("private", JSON.stringify({ to: b.id, text: secret })));
    await b.until((e) => e.event === "private" && e.text === secret, "the private message");

    const question = unique("are you there?");
    assert.ok(a.ns.chat.emit("ask", JSON.stringify({ to: b.id, text: question })));
    const ans = await a.until((e) => e.event === "answer" && e.question === question, "the answer", 15_000);
    assert.equal(ans.text, b.answer, `ask failed: ${ans.error}`);

    await fence(a, clients);
    for (const c of clients) {
      assert.equal(c.count(isChat(text)), 1, `${c.id}: the broadcast exactly once`);
      assert.equal(c.count((e) => e.text === secret), c === b ? 1 : 0, `${c.id}: the private message`);
    }
  });
});
