// A neffos.js test client of the chat, shared by chat.test.mjs and lb.test.mjs.
import assert from "node:assert/strict";
import * as neffos from "neffos.js";
import { Waiter } from "./harness.mjs";

let seq = 0;
export const unique = (what) => `${what} #${++seq} ${Math.random().toString(36).slice(2, 8)}`;

// client dials baseURL as name and connects to the given namespaces. It
// records every event it gets; a server question is answered at once with
// neffos.reply, neffos.js's way to reply to an Ask; it announces itself to
// newcomers, as the page does.
export async function client(baseURL, name, namespaces = ["chat"]) {
  const w = new Waiter();
  const got = [];
  const record = (event) => (nsConn, msg) => {
    let body = {};
    try {
      body = JSON.parse(msg.Body);
    } catch {
      // not JSON
    }
    got.push({ ns: msg.Namespace, event, room: msg.Room || "", err: msg.Err ? msg.Err.message : "", ...body });
    w.notify();
  };
  const c = { name, got, w, answer: `yes, ${name} here` };
  const events = () => ({
    chat: record("chat"),
    private: record("private"),
    // As the page does: tell a newcomer that we are here (a message To it).
    presence: (nsConn, msg) => {
      record("presence")(nsConn, msg);
      const e = got[got.length - 1];
      if (e.state === "online" && e.from !== c.conn?.ID) nsConn.emit("announce", e.from);
    },
    room: record("room"),
    answer: record("answer"),
    question: (nsConn, msg) => {
      record("question")(nsConn, msg);
      return neffos.reply(c.answer);
    },
    // An admin's notice, just before the server disconnects us: acknowledged,
    // as the page does.
    kicked: (nsConn, msg) => {
      record("kicked")(nsConn, msg);
      return neffos.reply("ok");
    },
  });
  const url = `${baseURL.replace(/^http/, "ws")}/ws?name=${encodeURIComponent(name)}`;
  c.conn = await neffos.dial(url, { chat: events(), support: events() });
  // Resolves when the websocket closes, whoever closed it.
  c.closed = new Promise((resolve) => c.conn.conn.addEventListener("close", (e) => resolve(e.code)));
  c.ns = {};
  for (const ns of namespaces) c.ns[ns] = await c.conn.connect(ns);
  const who = JSON.parse((await c.ns[namespaces[0]].ask("whoami", "")).Body);
  c.id = who.id;
  c.node = who.node;
  assert.equal(c.conn.ID, who.id, "whoami returns the connection's id");
  c.count = (pred) => got.filter(pred).length;
  c.until = (pred, what, ms) => w.waitFor(() => got.find(pred), `${name}: ${what}`, ms);
  return c;
}

export const isChat = (text, ns = "chat") => (e) => e.event === "chat" && e.ns === ns && e.text === text;

// fence sends a namespace-wide chat message from sender and waits until every
// client in clients got it.
export async function fence(sender, clients, ns = "chat") {
  const text = unique("fence");
  assert.ok(sender.ns[ns].emit("chat", text));
  await Promise.all(clients.map((c) => c.until(isChat(text, ns), `fence ${text}`)));
}
