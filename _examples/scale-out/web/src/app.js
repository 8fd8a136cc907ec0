// The scale-out chat page. It talks to the node that served it, over the
// real neffos.js client; the server-side events are in ../../chat.go. The
// "Nodes" and "Who is online" panels come from that node's cluster
// endpoints (../../cluster.go), polled every REFRESH_MS: what the
// exchange's Cluster operations answer for every node, not what this page
// heard in broadcasts.
//
// Built into ../dist/app.js by `npm run build` (esbuild); dist/ is committed
// and embedded by the Go example.
import * as neffos from "neffos.js";

const NAMESPACES = ["chat", "support"];
const REFRESH_MS = 1500; // the cluster panels' refresh period
const FETCH_TIMEOUT_MS = 5000; // the endpoints answer within 2 s (partial results past that)
const $ = (sel) => document.querySelector(sel);

const state = {
  conn: null, // neffos.Conn
  me: "", // this connection's id, name@node
  node: "", // the node this page is connected to
  nsConns: new Map(), // namespace -> neffos.NSConn
  active: NAMESPACES[0],
  kicked: null, // the "kicked" notice, when an admin disconnected this page
  nodes: null, // GET /cluster/nodes
  presence: null, // GET /cluster/presence?ns=<active>
  clusterError: "", // why the last refresh failed
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
    // Presence events are only logged: the "Who is online" panel comes from
    // the cluster (GET /cluster/presence), not from these.
    presence: handler((nsConn, msg, ev) => {
      if (!ev.from || ev.from === state.me) return;
      if (ev.state === "online") log("presence", { ns, text: `${ev.from} is online`, node: ev.node });
      else if (ev.state === "offline") log("presence", { ns, text: `${ev.from} left`, node: ev.node });
    }),
    // An admin is about to disconnect this page (POST /cluster/disconnect on
    // any node): the server asks first, so the notice is shown before the
    // socket closes. The reply tells it the page got it.
    kicked: (nsConn, msg) => {
      const ev = parse(msg);
      state.kicked = ev;
      log("kicked", { ns, from: ev.from, text: "disconnected you (admin action)", tag: "admin", via: `through ${ev.node}` });
      return neffos.reply("ok");
    },
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
    const k = state.kicked;
    const why = k ? `disconnected by ${k.from || "an admin"} (through ${k.node})` : `disconnected from ${state.node}`;
    setStatus(`${why}: reload to reconnect`, "offline");
    $("#status").dataset.reason = k ? "kicked" : "closed";
    for (const b of document.querySelectorAll("main button")) b.disabled = true;
  });
  $("#login").hidden = true;
  $("#app").hidden = false;
  render();
  refreshLoop();
}

async function connectNamespace(ns) {
  const nsConn = await state.conn.connect(ns);
  state.nsConns.set(ns, nsConn);
  if (!state.node) {
    const who = JSON.parse((await nsConn.ask("whoami", "")).Body);
    state.node = who.node;
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
      log("system", { ns, text: `left namespace ${ns}` });
      if (state.active === ns) state.active = [...state.nsConns.keys()][0] || state.active;
    } else {
      await connectNamespace(ns);
      state.active = ns;
      refresh();
    }
  } catch (err) {
    log("error", { ns, text: `${ns}: ${err.message || err}`, tag: "error" });
  }
  render();
}

// ---------------------------------------------------------------- cluster

// getJSON fetches one of this node's cluster endpoints. The endpoints
// answer 200 with partial results when a node is slow; any other status
// carries {"error"}.
async function getJSON(path, init = {}) {
  const res = await fetch(path, { cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), ...init });
  const body = await res.json().catch(() => ({}));
  return { status: res.status, body };
}

let refreshing = null;

// refresh reloads both cluster panels; calls while one runs share it.
function refresh() {
  refreshing ??= (async () => {
    try {
      const ns = encodeURIComponent(state.active);
      const [nodes, presence] = await Promise.all([getJSON("/cluster/nodes"), getJSON(`/cluster/presence?ns=${ns}`)]);
      if (nodes.status !== 200 || presence.status !== 200) {
        throw new Error(nodes.body.error || presence.body.error || `HTTP ${nodes.status}/${presence.status}`);
      }
      state.nodes = nodes.body;
      state.presence = presence.body;
      state.clusterError = "";
    } catch (err) {
      state.clusterError = `cluster view not updated: ${err && err.message ? err.message : err}`;
    } finally {
      refreshing = null;
    }
    renderCluster();
  })();
  return refreshing;
}

// refreshLoop refreshes the cluster panels every REFRESH_MS, one request
// pair at a time.
async function refreshLoop() {
  for (;;) {
    await refresh();
    await new Promise((resolve) => setTimeout(resolve, REFRESH_MS));
  }
}

// kick is the admin action: POST /cluster/disconnect, answered by this
// node, for a user on any node (Cluster.Disconnect).
async function kick(id, button) {
  button.disabled = true;
  try {
    const q = new URLSearchParams({ id, by: state.me });
    const { status, body } = await getJSON(`/cluster/disconnect?${q}`, { method: "POST" });
    if (status === 200) {
      log("admin", { text: `you disconnected ${id}`, tag: "admin", via: `(held by ${body.node || "?"}, asked through ${body.via})` });
    } else {
      log("error", { text: `disconnect ${id}: ${body.error || "HTTP " + status}`, tag: "admin" });
    }
  } catch (err) {
    log("error", { text: `disconnect ${id}: ${err.message || err}`, tag: "admin" });
  }
  await refresh();
}

function duration(seconds) {
  if (seconds < 60) return `${seconds}s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${String(seconds % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

function renderCluster() {
  const nodes = state.nodes?.nodes || [];
  $("#nodes").replaceChildren(
    ...nodes.map((n) => {
      const name = n.url ? document.createElement("a") : document.createElement("span");
      name.className = "node";
      name.textContent = n.name;
      if (n.url) {
        name.href = n.url;
        name.target = "_blank";
      }
      const conns = span(`${n.conns} conn${n.conns === 1 ? "" : "s"}`, "grow num");
      const s = n.stats;
      const stats = span(`up ${duration(n.uptimeSeconds)} · sent ${s.published} · got ${s.received} · delivered ${s.delivered} · subs ${s.subscriptions}`, "stats");
      stats.title = `published ${s.published}, received ${s.received}, delivered ${s.delivered}, dropped ${s.dropped}, missed ${s.missed}, subscriptions ${s.subscriptions}, queued ${s.queued}, pending asks ${s.pendingAsks}`;
      const item = li(name, n.self ? span("(here)", "muted") : "", conns, stats);
      item.dataset.node = n.name;
      item.dataset.conns = n.conns;
      if (n.self) item.className = "current";
      return item;
    }),
  );

  const p = state.presence;
  const groups = (p && p.namespace === state.active ? p.nodes : []).filter((g) => g.users.length > 0 || !g.answered);
  // Rebuilt only when it changed, so a click is not lost to a refresh.
  const key = JSON.stringify([state.me, groups]);
  if (key !== renderedOnline) {
    renderedOnline = key;
    renderOnline(groups);
  }
  const notes = [];
  if (state.clusterError) notes.push(state.clusterError);
  if (p?.missing?.length) notes.push(`no answer in time from ${p.missing.map((m) => m.name).join(", ")}: their users are not listed`);
  if (p && p.total === 0 && !notes.length) notes.push("nobody");
  const note = $("#online-note");
  note.textContent = notes.join("; ");
  note.hidden = notes.length === 0;

  const ids = groups.flatMap((g) => g.users.map((u) => u.id)).filter((id) => id !== state.me);
  $("#user-ids").replaceChildren(...ids.map((id) => new Option(id, id)));
}

let renderedOnline = "";

function renderOnline(groups) {
  $("#online").replaceChildren(
    ...groups.map((g) => {
      const head = document.createElement("h3");
      head.append(span(g.name, "node"), ` ${g.answered ? g.users.length : "?"}`);
      const list = document.createElement("ul");
      list.className = "list";
      list.append(
        ...g.users.map((u) => {
          const me = u.id === state.me;
          const name = span(me ? `${u.name} (you)` : u.name);
          name.title = `${u.id}${u.rooms.length ? ", in " + u.rooms.join(", ") : ""}: click to message or ask`;
          name.style.cursor = "pointer";
          name.addEventListener("click", () => {
            $("#private-to").value = u.id;
            $("#ask-to").value = u.id;
          });
          const item = li(name);
          if (!me) {
            const b = smallButton("disconnect", () => kick(u.id, b), "kick");
            b.title = `admin: disconnect ${u.id} on ${g.name}, through ${state.node}`;
            b.setAttribute("aria-label", `disconnect ${u.id}`);
            item.append(b);
          }
          item.dataset.id = u.id;
          item.dataset.node = g.name;
          if (me) item.className = "current";
          return item;
        }),
      );
      const box = document.createElement("div");
      box.className = "group";
      box.dataset.node = g.name;
      box.dataset.answered = g.answered;
      box.append(head, list);
      return box;
    }),
  );
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
        refresh();
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

  renderCluster();
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
