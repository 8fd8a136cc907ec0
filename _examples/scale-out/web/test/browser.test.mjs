// End to end in a real browser: Debian's chromium, headless, driven by
// playwright-core, on the chat page that the example's nodes serve.
//
//   npm run test:browser     # starts the example itself (go run, or $SCALEOUT_BIN)
//
// alice's page is on node 1, bob's on node 2, carol's on node 3: alice and
// bob join one room and talk both ways, alice sends bob a private message
// (carol, a witness on a third node, must not get it) and bob asks alice,
// through the server, whether she is there. Screenshots of the pages, and
// of alice's and bob's side by side, are written to $SCREENSHOT_DIR
// (default web/artifacts/).
//
// Environment: CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startExample, exampleDir } from "./harness.mjs";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const artifacts = process.env.SCREENSHOT_DIR || join(exampleDir, "web", "artifacts");
// Chromium's own network traffic is refused on this machine's closed network:
// keep it quiet. playwright-core adds --headless and a fresh --user-data-dir.
const args = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const deadline = 15_000; // every wait below is for a condition, bounded by this

describe("scale-out chat in headless Chromium, pages on different nodes", () => {
  let ex, browser;
  const pages = {};

  // open loads the page of node i as name, which connects at once (?name=).
  async function open(name, i) {
    const context = await browser.newContext({ viewport: { width: 880, height: 690 } });
    const page = await context.newPage();
    page.on("pageerror", (err) => console.error(`${name}: page error: ${err}`));
    await page.goto(`${ex.urls[i]}/?name=${name}`);
    const status = page.locator("#status.online");
    await status.waitFor({ timeout: deadline });
    const node = await status.getAttribute("data-node");
    const id = await status.getAttribute("data-id");
    return { page, node, id, name };
  }

  const log = (p) => p.page.locator("#log li");
  const entries = (p, kind, text) => p.page.locator(`#log li[data-kind="${kind}"]`).filter({ hasText: text });

  async function joinRoom(p, room) {
    await p.page.fill("#room-name", room);
    await p.page.click("#join-room");
    await p.page.locator(`#rooms li[data-room="${room}"]`).waitFor({ timeout: deadline });
  }

  async function say(p, text, target = "") {
    await p.page.selectOption("#target", target);
    await p.page.fill("#text", text);
    await p.page.click("#send");
  }

  before(async () => {
    ex = await startExample({ nodes: 3 });
    browser = await chromium.launch({ executablePath, headless: true, args });
    pages.alice = await open("alice", 0);
    pages.bob = await open("bob", 1);
    pages.carol = await open("carol", 2);
  });

  after(async () => {
    await browser?.close();
    if (ex) await ex.stop();
  });

  test("each page shows the node it is connected to", async () => {
    const { alice, bob, carol } = pages;
    assert.equal(new Set([alice.node, bob.node, carol.node]).size, 3, "three pages, three nodes");
    assert.equal(alice.id, `alice@${alice.node}`);
    assert.match(await alice.page.textContent("#status"), new RegExp(`connected to node ${alice.node}`));
    // Each page lists the others, learned across nodes (presence).
    await alice.page.locator(`#users li[data-id="${bob.id}"]`).waitFor({ timeout: deadline });
    await bob.page.locator(`#users li[data-id="${alice.id}"]`).waitFor({ timeout: deadline });
  });

  test("two pages on two nodes join one room and exchange messages both ways", async () => {
    const { alice, bob, carol } = pages;
    await joinRoom(alice, "lobby");
    await joinRoom(bob, "lobby");
    await say(alice, "hi bob, this is alice on " + alice.node, "lobby");
    await say(bob, "hi alice! bob here, on " + bob.node, "lobby");
    for (const p of [alice, bob]) {
      await entries(p, "chat", "hi bob, this is alice").first().waitFor({ timeout: deadline });
      await entries(p, "chat", "hi alice! bob here").first().waitFor({ timeout: deadline });
    }
    const got = entries(bob, "chat", "hi bob, this is alice");
    assert.equal(await got.getAttribute("data-room"), "lobby");
    assert.equal(await got.getAttribute("data-from"), alice.id);
    assert.match(await got.textContent(), new RegExp(`via ${alice.node}`));
    // A later message to everyone from each sender is the fence for
    // exactly-once and for the room's boundary (carol did not join).
    await say(alice, "(to everyone) bob and I are in the lobby");
    await say(bob, "(to everyone) hello from " + bob.node);
    for (const p of [alice, bob, carol]) {
      await entries(p, "chat", "(to everyone) bob and I are in the lobby").waitFor({ timeout: deadline });
      await entries(p, "chat", "(to everyone) hello from " + bob.node).waitFor({ timeout: deadline });
    }
    for (const p of [alice, bob]) {
      assert.equal(await entries(p, "chat", "hi bob, this is alice").count(), 1, `${p.name}: once`);
      assert.equal(await entries(p, "chat", "hi alice! bob here").count(), 1, `${p.name}: once`);
    }
    assert.equal(await log(carol).filter({ hasText: "hi bob, this is alice" }).count(), 0, "carol is not in the room");
  });

  test("a private message arrives only at its target", async () => {
    const { alice, bob, carol } = pages;
    await alice.page.fill("#private-to", bob.id);
    await alice.page.fill("#private-text", "a secret for bob only");
    await alice.page.click("#send-private");
    const got = entries(bob, "private", "a secret for bob only");
    await got.waitFor({ timeout: deadline });
    assert.equal(await got.getAttribute("data-from"), alice.id);
    await say(alice, "thanks, everyone");
    for (const p of [alice, bob, carol]) await entries(p, "chat", "thanks, everyone").waitFor({ timeout: deadline });
    assert.equal(await got.count(), 1, "bob: exactly once");
    assert.equal(await entries(carol, "private", "secret").count(), 0, "carol (node 3) must not get it");
    assert.equal(await entries(alice, "private", "secret").count(), 0, "nor the sender, from the server");
    assert.equal(await entries(alice, "private-sent", "a secret for bob only").count(), 1, "the sender's own note");
  });

  test("server-side Ask: bob asks alice 'are you there?', she answers on her page", async () => {
    const { alice, bob } = pages;
    await bob.page.fill("#ask-to", alice.id);
    await bob.page.fill("#ask-text", "are you there?");
    await bob.page.click("#ask");
    const card = alice.page.locator(`#questions .question[data-from="${bob.id}"]`);
    await card.waitFor({ timeout: deadline });
    assert.match(await card.textContent(), /are you there\?/);
    await card.locator(".answer-text").fill("yes, alice here!");
    await card.locator("button.answer").click();
    const answer = entries(bob, "answer", "yes, alice here!");
    await answer.waitFor({ timeout: deadline });
    assert.equal(await answer.getAttribute("data-from"), alice.id);
    assert.equal(await answer.count(), 1);
  });

  test("screenshots", async () => {
    mkdirSync(artifacts, { recursive: true });
    const shots = {};
    for (const [name, p] of Object.entries(pages)) {
      shots[name] = join(artifacts, `${name}.png`);
      await p.page.screenshot({ path: shots[name] });
    }
    // alice's and bob's pages side by side, as they are now, for the README.
    const img = (name) => `data:image/png;base64,${readFileSync(shots[name]).toString("base64")}`;
    const caption = (p, i) => `${p.name}'s page: ${ex.urls[i].replace("http://", "")}, node ${p.node}`;
    const page = await browser.newPage({ viewport: { width: 1780, height: 730 } });
    await page.setContent(`<!doctype html><body style="margin:0;padding:10px;background:#c9ceda;font:14px system-ui;display:flex;gap:10px">
      <figure style="margin:0"><figcaption style="padding:0 0 4px">${caption(pages.alice, 0)}</figcaption><img src="${img("alice")}" style="border:1px solid #888"></figure>
      <figure style="margin:0"><figcaption style="padding:0 0 4px">${caption(pages.bob, 1)}</figcaption><img src="${img("bob")}" style="border:1px solid #888"></figure>
    </body>`);
    const both = join(artifacts, "chat.png");
    await page.screenshot({ path: both, fullPage: true });
    console.log(`screenshots: ${Object.values(shots).join(", ")}, ${both}`);
  });
});
