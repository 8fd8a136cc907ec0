// The scale-out chat page. It talks to the node that served it, over the
// real neffos.js client; the server-side events are in ../../chat.go.
//
// Built into ../dist/app.js by `npm run build` (esbuild); dist/ is committed
// and embedded by the Go example.
import * as neffos from "neffos.js";

const NAMESPACES = ["chat", "support"];
const $ = (sel) => document.querySelector(sel);

const state = {
  conn: null, // neffos.Conn
  me: "", // this connection's id, name@node
  node: "", // the node this page is connected to
  peers: [], // [{name, url}] of the nodes this node knows
  nsConns: new Map(), // namespace -> neffos.NSConn
  active: NAMESPACES[0],
  users: new Map(NAMESPACES.map((ns) => [ns, new Map()])), // namespace -> id -> node
};

// ---------------------------------------------------------------- log

function log(kind, { ns = state.active, room = "", from = "", node = "", text = "", tag = "", via = "" } = {}) {
  const li = document.createElement("li");
  li.dataset.kind = kind;
  li.dataset.ns = ns;
  li.dataset.room = room;
  li.dataset.from = from;
  li.dataset.text = text;
  const t = document.createElement("span");
  t.className = "tag";
  t.textContent = tag || (room ? `${ns} / ${room}` : ns);
  li.append(t);
  if (from) {
    const b = document.createElement("b");
    b.textContent = from;
    li.append(b, ": ");
  }
  li.append(text);
  if (via || node) {
    const v = document.createElement("span");
    v.className = "via";
    v.textContent = ` ${via || "via " + node}`;
    li.append(v);
  }
  const list = $("#log");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function parse(msg) {
  try {
    return JSON.parse(msg.Body);
  } catch {
    return {};
  }
}

// ---------------------------------------------------------------- events

// handler wraps an event handler: an error the server sent back is logged,
// and nothing is returned to neffos.js (a returned value would be written
// back to the server).
function handler(fn) {
  return (nsConn, msg) => {
    if (msg.isError || msg.Err) {
      log("error", { ns: msg.Namespace, text: `${msg.Event}: ${msg.Err ? msg.Err.message : "error"}`, tag: "error" });
      return;
    }
    fn(nsConn, msg, parse(msg));
  };
}

function events(ns) {
  return {
    [neffos.OnNamespaceDisconnect]: (nsConn, msg) => {
      state.nsConns.delete(ns);
      state.users.get(ns).clear();
      if (msg.IsForced && !msg.IsLocal) log("system", { ns, text: "disconnected by the server", tag: ns });
      render();
    },
    [neffos.OnRoomJoined]: () => render(),
    [neffos.OnRoomLeft]: () => render(),
    chat: handler((nsConn, msg, ev) => log("chat", { ns, room: msg.Room, from: ev.from, node: ev.node, text: ev.text })),
    private: handler((nsConn, msg, ev) =>
      log("private", { ns, from: ev.from, node: ev.node, text: ev.text, tag: "private" })),
    room: handler((nsConn, msg, ev) => {
      if (ev.from !== state.me) log("system", { ns, room: ev.room, text: `${ev.from} ${ev.state} the room`, node: ev.node });
    }),
    presence: handler((nsConn, msg, ev) => {
      if (!ev.from || ev.from === state.me) return;
      const users = state.users.get(ns);
      if (ev.state === "offline") {
        users.delete(ev.from);
        log("presence", { ns, text: `${ev.from} left`, node: ev.node });
      } else {
        const known = users.has(ev.from);
        users.set(ev.from, ev.node);
        if (ev.state === "online") {
          log("presence", { ns, text: `${ev.from} is online`, node: ev.node });
          // Tell the newcomer that we are here too: a message To its id.
          nsConn.emit("announce", ev.from);
        } else if (!known) {
          log("presence", { ns, text: `${ev.from} is here`, node: ev.node });
        }
      }
      render();
    }),
    // A question from the server (Server.Ask on behalf of another user).
    // The answer is written later, when the user clicks: the reply is the
    // same message with a new body, so it carries the server's wait token.
    question: handler((nsConn, msg, ev) => showQuestion(nsConn, msg, ev)),
    answer: handler((nsConn, msg, ev) => {
      if (ev.error) {
        log("answer", { ns, text: `no answer from ${ev.from} to "${ev.question}": ${ev.error}`, tag: "ask" });
      } else {
        log("answer", { ns, from: ev.from, text: ev.text, tag: "answer", via: `to "${ev.question}", in ${ev.ms ?? 0} ms` });
      }
    }),
  };
}

function showQuestion(nsConn, msg, ev) {
  const box = document.createElement("form");
  box.className = "question";
  box.dataset.from = ev.from;
  const p = document.createElement("p");
  p.textContent = `${ev.from} asks, through node ${ev.node}: "${ev.text}"`;
  const row = document.createElement("div");
  row.className = "row";
  const input = document.createElement("input");
  input.className = "answer-text";
  input.value = "yes, I'm here";
  input.required = true;
  const button = document.createElement("button");
  button.className = "answer";
  button.type = "submit";
  button.textContent = "Answer";
  row.append(input, button);
  box.append(p, row);
  box.addEventListener("submit", (e) => {
    e.preventDefault();
    msg.Body = input.value;
    if (nsConn.conn.write(msg)) {
      log("answered", { ns: msg.Namespace, text: `you answered ${ev.from}: ${input.value}`, tag: "ask" });
    }
    box.remove();
  });
  $("#questions").append(box);
  log("question", { ns: msg.Namespace, from: ev.from, node: ev.node, text: ev.text, tag: "question" });
}

// ---------------------------------------------------------------- actions

async function connect(name) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/ws?name=${encodeURIComponent(name)}`;
  const handlers = Object.fromEntries(NAMESPACES.map((ns) => [ns, events(ns)]));
  setStatus("connecting…");
  try {
    state.conn = await neffos.dial(url, handlers);
    state.me = state.conn.ID;
    await connectNamespace(NAMESPACES[0]);
  } catch (err) {
    setStatus(`could not connect: ${err && err.message ? err.message : err}`, "offline");
    return;
  }
  state.conn.conn.addEventListener("close", () => {
    setStatus(`disconnected from ${state.node}: reload to reconnect`, "offline");
    for (const b of document.querySelectorAll("main button")) b.disabled = true;
  });
  $("#login").hidden = true;
  $("#app").hidden = false;
  render();
}

async function connectNamespace(ns) {
  const nsConn = await state.conn.connect(ns);
  state.nsConns.set(ns, nsConn);
  if (!state.node) {
    const who = JSON.parse((await nsConn.ask("whoami", "")).Body);
    state.node = who.node;
    state.peers = who.peers || [];
    document.title = `${state.me} · ${who.node} · neffos scale-out chat`;
    setStatus(null, "online");
  }
  log("system", { ns, text: `connected to namespace ${ns} on ${state.node}` });
}

function setStatus(text, cls = "") {
  const s = $("#status");
  s.className = `status ${cls}`;
  s.dataset.node = state.node;
  s.dataset.id = state.me;
  if (text !== null) {
    s.textContent = text;
    return;
  }
  s.replaceChildren("you are ", bold(state.me), ", connected to node ", bold(state.node), ` (${location.host})`);
}

function bold(text) {
  const b = document.createElement("b");
  b.textContent = text;
  return b;
}

function active() {
  return state.nsConns.get(state.active);
}

function send(e) {
  e.preventDefault();
  const nsConn = active();
  const text = $("#text").value;
  if (!nsConn || !text.trim()) return;
  const target = $("#target").value;
  const ok = target === "" ? nsConn.emit("chat", text) : nsConn.room(target)?.emit("chat", text);
  if (ok) $("#text").value = "";
}

function sendPrivate(e) {
  e.preventDefault();
  const nsConn = active();
  const to = $("#private-to").value.trim();
  const text = $("#private-text").value;
  if (!nsConn || !to || !text.trim()) return;
  if (nsConn.emit("private", JSON.stringify({ to, text }))) {
    log("private-sent", { text, tag: `private to ${to}`, via: "(only they get it)" });
    $("#private-text").value = "";
  }
}

function ask(e) {
  e.preventDefault();
  const nsConn = active();
  const to = $("#ask-to").value.trim();
  const text = $("#ask-text").value;
  if (!nsConn || !to || !text.trim()) return;
  if (nsConn.emit("ask", JSON.stringify({ to, text }))) {
    log("ask-sent", { text: `asked ${to}: "${text}" (the server asks them and waits for the reply)`, tag: "ask" });
  }
}

async function joinRoom(e) {
  e.preventDefault();
  const nsConn = active();
  const room = $("#room-name").value.trim();
  if (!nsConn || !room) return;
  try {
    await nsConn.joinRoom(room);
    $("#target").value = room;
    log("system", { room, text: `you joined ${room} on ${state.node}` });
  } catch (err) {
    log("error", { text: `join ${room}: ${err.message || err}`, tag: "error" });
  }
  render();
}

async function toggleNamespace(ns) {
  const nsConn = state.nsConns.get(ns);
  try {
    if (nsConn) {
      await nsConn.disconnect();
      state.nsConns.delete(ns);
      state.users.get(ns).clear();
      log("system", { ns, text: `left namespace ${ns}` });
      if (state.active === ns) state.active = [...state.nsConns.keys()][0] || state.active;
    } else {
      await connectNamespace(ns);
      state.active = ns;
    }
  } catch (err) {
    log("error", { ns, text: `${ns}: ${err.message || err}`, tag: "error" });
  }
  render();
}

// ---------------------------------------------------------------- render

function li(...children) {
  const el = document.createElement("li");
  el.append(...children);
  return el;
}

function span(text, cls = "grow") {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  return s;
}

function smallButton(text, onClick, cls = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `small ${cls}`;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

function render() {
  for (const el of document.querySelectorAll(".active-ns")) el.textContent = state.active;

  $("#peers").replaceChildren(
    ...state.peers.map((p) => {
      const a = document.createElement("a");
      a.href = p.url;
      a.target = "_blank";
      a.textContent = p.url.replace(/^https?:\/\//, "");
      const item = li(span(p.name, "node"), " ", a);
      if (p.name === state.node) item.className = "current";
      return item;
    }),
  );
  if (state.peers.length === 0) $("#peers").replaceChildren(li(span(state.node, "node"), " behind the load balancer"));

  $("#namespaces").replaceChildren(
    ...NAMESPACES.map((ns) => {
      const connected = state.nsConns.has(ns);
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = "active-ns";
      radio.checked = state.active === ns;
      radio.disabled = !connected;
      radio.addEventListener("change", () => {
        state.active = ns;
        render();
      });
      const item = li(radio, span(ns), smallButton(connected ? "leave" : "connect", () => toggleNamespace(ns)));
      item.dataset.ns = ns;
      item.dataset.connected = connected;
      return item;
    }),
  );

  const nsConn = active();
  const rooms = nsConn ? [...nsConn.rooms.keys()] : [];
  $("#rooms").replaceChildren(
    ...rooms.map((room) => {
      const item = li(
        span(room),
        smallButton("leave", async () => {
          const err = await nsConn.room(room)?.leave();
          if (err) log("error", { text: `leave ${room}: ${err.message || err}`, tag: "error" });
          else log("system", { room, text: `you left ${room}` });
          render();
        }, "leave-room"),
      );
      item.dataset.room = room;
      return item;
    }),
  );

  const target = $("#target");
  const selected = target.value;
  const everyone = new Option(`everyone in ${state.active}`, "");
  target.replaceChildren(everyone, ...rooms.map((r) => new Option(`room ${r}`, r)));
  target.value = rooms.includes(selected) ? selected : "";

  const users = [...state.users.get(state.active)].sort();
  $("#users").replaceChildren(
    ...users.map(([id, node]) => {
      const item = li(span(id), span(node, "node"));
      item.dataset.id = id;
      item.title = "click to message or ask";
      item.style.cursor = "pointer";
      item.addEventListener("click", () => {
        $("#private-to").value = id;
        $("#ask-to").value = id;
      });
      return item;
    }),
  );
  $("#user-ids").replaceChildren(...users.map(([id]) => new Option(id, id)));
}

// ---------------------------------------------------------------- start

$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  $("#connect").disabled = true;
  connect($("#name").value.trim()).finally(() => ($("#connect").disabled = false));
});
$("#send-form").addEventListener("submit", send);
$("#private-form").addEventListener("submit", sendPrivate);
$("#ask-form").addEventListener("submit", ask);
$("#join-form").addEventListener("submit", joinRoom);

// ?name=alice connects at once.
const params = new URLSearchParams(location.search);
$("#name").value = params.get("name") || `guest${Math.floor(Math.random() * 900 + 100)}`;
if (params.get("name")) $("#login").requestSubmit();
