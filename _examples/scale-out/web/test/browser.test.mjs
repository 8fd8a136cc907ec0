// End to end in a real browser: Debian's chromium, headless, driven by
// playwright-core, on the chat page that the example's nodes serve.
//
//   npm run test:browser     # starts the example itself (go run, or $SCALEOUT_BIN)
//
// alice's page is on node 1, bob's on node 2, carol's on node 3: alice and
// bob join one room and talk both ways, alice sends bob a private message
// (carol, a witness on a third node, must not get it) and bob asks alice,
// through the server, whether she is there. The "Who is online" panel
// (GET /cluster/presence) of a late page on node 3 lists everyone under
// their node, and its "Nodes" panel the three nodes; alice, on node 1,
// disconnects eve, whose page is on node 2: eve's page shows who
// disconnected her, and every page's list drops her. Screenshots of the pages, and
// of alice's and bob's side by side, are written to $SCREENSHOT_DIR
// (default web/artifacts/). Then the page is used at a phone's width
// (390 px) and a desktop's (1280 px): nothing wider than the viewport,
// fields wide enough to type in, no word broken mid-word, the icon served,
// and no page logs a console error (a 404 logs one). disconnected.png is
// eve's page after alice disconnected her.
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
const widths = [390, 1280]; // an iPhone 12-15's viewport, and a desktop's
const minFieldWidth = 120; // px: a text field narrower than this is a sliver

describe("scale-out chat in headless Chromium, pages on different nodes", () => {
  let ex, browser;
  const pages = {};

  // open loads the page of node i as name, which connects at once (?name=).
  // Console errors (a failed resource load logs one) and uncaught page
  // errors are kept in errors, which the tests expect to stay empty.
  async function open(name, i, viewport = { width: 880, height: 690 }, device = {}) {
    const context = await browser.newContext({ viewport, ...device });
    const page = await context.newPage();
    const errors = [];
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(`console: ${m.text()} (${m.location().url || "?"})`);
    });
    page.on("pageerror", (err) => errors.push(`page error: ${err}`));
    await page.goto(`${ex.urls[i]}/?name=${name}`);
    const status = page.locator("#status.online");
    await status.waitFor({ timeout: deadline });
    const node = await status.getAttribute("data-node");
    const id = await status.getAttribute("data-id");
    return { page, node, id, name, errors };
  }

  const log = (p) => p.page.locator("#log li");
  // online is who's row in p's "Who is online" panel, under who's node.
  const online = (p, who) => p.page.locator(`#online .group[data-node="${who.node}"] li[data-id="${who.id}"]`);
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
    // Each page lists the others, on their nodes, from the cluster.
    await online(alice, bob).waitFor({ timeout: deadline });
    await online(bob, alice).waitFor({ timeout: deadline });
  });

  test("who is online: the cluster-wide list, by node, on a page that heard no presence broadcast", async () => {
    const { alice, bob, carol } = pages;
    // dave arrives last, on node 3: the others' "online" broadcasts came
    // before his page existed, and pages do not announce themselves, so
    // only GET /cluster/presence (Cluster.Conns) can tell him who is here.
    const dave = await open("dave", 2);
    try {
      for (const p of [alice, bob, carol, dave]) await online(dave, p).waitFor({ timeout: deadline });
      assert.equal(await dave.page.locator(`#online li[data-id="${dave.id}"]`).getAttribute("class"), "current", "himself, marked");
      assert.equal(await dave.page.locator(`#online li[data-id="${dave.id}"] button.kick`).count(), 0, "no button to kick himself");
      assert.match(await dave.page.textContent(`#online li[data-id="${bob.id}"]`), /^bob/, "bob's name");
      // The groups are the nodes, each once, with its count.
      const groups = await dave.page.locator("#online .group").evaluateAll((els) => els.map((e) => [e.dataset.node, e.querySelectorAll("li").length]));
      assert.deepEqual(Object.fromEntries(groups), { [alice.node]: 1, [bob.node]: 1, [carol.node]: 2 });
      // and alice's page, on node 1, lists dave on node 3.
      await online(alice, dave).waitFor({ timeout: deadline });
      // The Nodes panel: the three live nodes (Cluster.Nodes), this one marked.
      for (const n of [alice.node, bob.node, carol.node]) {
        await dave.page.locator(`#nodes li[data-node="${n}"]`).waitFor({ timeout: deadline });
      }
      assert.equal(await dave.page.locator("#nodes li").count(), 3);
      assert.equal(await dave.page.locator("#nodes li.current").getAttribute("data-node"), carol.node);
      await dave.page.locator(`#nodes li[data-node="${carol.node}"][data-conns="2"]`).waitFor({ timeout: deadline });
      assert.match(await dave.page.textContent(`#nodes li[data-node="${bob.node}"]`), /^node\d+1 conn.*up \d.*subs \d+$/);
      assert.deepEqual(dave.errors, [], "dave's page");
    } finally {
      await dave.page.context().close();
    }
    // dave's page closed: the others' lists drop him.
    await alice.page.locator(`#online li[data-id="dave@${carol.node}"]`).waitFor({ state: "detached", timeout: deadline });
  });

  test("admin: alice on node 1 disconnects eve, whom node 2 holds; eve's page says so, every list drops her", async () => {
    const { alice, bob, carol } = pages;
    const eve = await open("eve", 1);
    try {
      assert.equal(eve.node, bob.node);
      const row = online(alice, eve);
      await row.waitFor({ timeout: deadline });
      await online(carol, eve).waitFor({ timeout: deadline });
      await row.locator("button.kick").click();

      // eve's page: the notice from the server, then the closed socket.
      const notice = eve.page.locator(`#log li[data-kind="kicked"][data-from="${alice.id}"]`);
      await notice.waitFor({ timeout: deadline });
      assert.match(await notice.textContent(), new RegExp(`disconnected you.*through ${alice.node}`));
      const status = eve.page.locator('#status.offline[data-reason="kicked"]');
      await status.waitFor({ timeout: deadline });
      assert.match(await status.textContent(), new RegExp(`disconnected by ${alice.id} \\(through ${alice.node}\\)`));
      assert.ok(await eve.page.locator("#send").isDisabled(), "eve's send button is disabled");

      // alice's page: the result, then eve leaves every list.
      await entries(alice, "admin", `you disconnected ${eve.id}`).waitFor({ timeout: deadline });
      assert.match(await entries(alice, "admin", eve.id).textContent(), new RegExp(`held by ${eve.node}`));
      // (eve's page too: its panels still refresh over HTTP.)
      for (const p of [alice, bob, carol, eve]) {
        await p.page.locator(`#online li[data-id="${eve.id}"]`).waitFor({ state: "detached", timeout: deadline });
      }
      mkdirSync(artifacts, { recursive: true });
      await eve.page.screenshot({ path: join(artifacts, "disconnected.png") });
      // Only eve: the others are still online and still chat.
      for (const p of [alice, bob, carol]) assert.equal(await p.page.locator("#status.online").count(), 1, `${p.name} online`);
      await say(bob, "still here after eve left");
      for (const p of [alice, bob, carol]) await entries(p, "chat", "still here after eve left").waitFor({ timeout: deadline });
      assert.deepEqual(eve.errors, [], "eve's page");
    } finally {
      await eve.page.context().close();
    }
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

  // layout measures the page as laid out now: what sticks out to the right
  // of the viewport, the width of every visible text field and select, and
  // the words of `sentence` (in the log) that wrap across two lines.
  function layout(page, sentence) {
    return page.evaluate((sentence) => {
      const vw = document.documentElement.clientWidth;
      const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
      const label = (el) => el.tagName.toLowerCase() + (el.id ? `#${el.id}` : "") + (el.className && typeof el.className === "string" ? `.${el.className.trim().split(/\s+/).join(".")}` : "");
      const overflowing = [...document.body.querySelectorAll("*")]
        .filter(visible)
        .map((el) => [label(el), el.getBoundingClientRect().right])
        .filter(([, right]) => right > vw + 0.5)
        .map(([l, right]) => `${l} ends at ${Math.round(right)} px`);
      const fields = [...document.querySelectorAll("input:not([type=radio]), select")]
        .filter(visible)
        .map((el) => ({ field: label(el), width: Math.round(el.getBoundingClientRect().width) }));
      // A word on two lines has two client rects.
      const broken = [];
      const item = [...document.querySelectorAll("#log li")].find((li) => li.dataset.text === sentence);
      const text = item && [...item.childNodes].find((n) => n.nodeType === Node.TEXT_NODE && n.data.includes(sentence));
      if (text) {
        const start = text.data.indexOf(sentence);
        for (const m of sentence.matchAll(/\S+/g)) {
          const r = document.createRange();
          r.setStart(text, start + m.index);
          r.setEnd(text, start + m.index + m[0].length);
          const lines = new Set([...r.getClientRects()].filter((c) => c.width > 0).map((c) => Math.round(c.top)));
          if (lines.size > 1) broken.push(m[0]);
        }
      }
      return {
        viewport: vw,
        scrollWidth: document.documentElement.scrollWidth,
        overflowing,
        fields,
        logWidth: Math.round(document.querySelector("#log").getBoundingClientRect().width),
        sentenceFound: Boolean(text),
        broken,
      };
    }, sentence);
  }

  for (const width of widths) {
    test(`at ${width} px wide: no horizontal overflow, usable fields, whole words, no console errors`, async () => {
      const { bob } = pages;
      // Below 600 px as a phone: touch, and the page's <meta name="viewport">
      // honoured (a page wider than the screen would be zoomed out).
      const phone = width < 600 ? { isMobile: true, hasTouch: true, deviceScaleFactor: 2 } : {};
      const p = await open(`w${width}`, 0, { width, height: 844 }, phone);
      try {
        await joinRoom(p, "lobby");
        await online(p, bob).waitFor({ timeout: deadline });
        // Ordinary words must wrap between words; one long unbroken token
        // (a URL) may break, but must stay inside the log.
        const sentence = `a reasonably long sentence about internationalization and interoperability for the ${width} px page`;
        const url = `https://example.invalid/${"averyveryverylongpathsegment".repeat(4)}`;
        await say(bob, sentence, "lobby");
        await say(bob, url, "lobby");
        await entries(p, "chat", sentence).waitFor({ timeout: deadline });
        await entries(p, "chat", url).waitFor({ timeout: deadline });
        // bob asks this page: its question card (a field and a button) too.
        await bob.page.fill("#ask-to", p.id);
        await bob.page.fill("#ask-text", `are you there, ${p.name}?`);
        await bob.page.click("#ask");
        const card = p.page.locator(`#questions .question[data-from="${bob.id}"]`);
        await card.waitFor({ timeout: deadline });

        const m = await layout(p.page, sentence);
        mkdirSync(artifacts, { recursive: true });
        await p.page.screenshot({ path: join(artifacts, `width-${width}.png`), fullPage: true });
        assert.equal(m.viewport, width);
        assert.equal(m.scrollWidth, width, `the page lays out ${m.scrollWidth} px wide in a ${width} px viewport`);
        assert.deepEqual(m.overflowing, [], "elements past the right edge");
        const names = m.fields.map((f) => f.field);
        for (const want of ["input#room-name", "select#target", "input#text", "input#private-to", "input#private-text", "input#ask-to", "input#ask-text", "input.answer-text"]) {
          assert.ok(names.includes(want), `${want} is shown (shown: ${names.join(", ")})`);
        }
        const slivers = m.fields.filter((f) => f.width < minFieldWidth);
        assert.deepEqual(slivers, [], `fields narrower than ${minFieldWidth} px`);
        const minLog = Math.min(width - 60, 600);
        assert.ok(m.logWidth >= minLog, `the log is ${m.logWidth} px wide, want at least ${minLog}`);
        assert.ok(m.sentenceFound, "the sentence is in the log");
        assert.deepEqual(m.broken, [], "words broken across lines");

        // Still usable: answering from this width reaches bob.
        await card.locator(".answer-text").fill(`yes, ${p.name} here`);
        await card.locator("button.answer").click();
        await entries(bob, "answer", `yes, ${p.name} here`).waitFor({ timeout: deadline });

        // The icon the page names, and /favicon.ico for those who ask anyway.
        for (const path of ["favicon.svg", "favicon.ico"]) {
          const res = await p.page.request.get(`${ex.urls[0]}/${path}`);
          assert.equal(res.status(), 200, `/${path}`);
          assert.match(res.headers()["content-type"] || "", /^image\/svg\+xml/, `/${path}`);
        }
        assert.deepEqual(p.errors, [], `console errors at ${width} px`);
      } finally {
        await p.page.context().close();
      }
    });
  }

  test("no page logged a console error", () => {
    for (const p of Object.values(pages)) assert.deepEqual(p.errors, [], `${p.name}'s page`);
  });
});
