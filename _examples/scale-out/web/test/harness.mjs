// Shared by the tests: start the scale-out example on random ports, wait
// for conditions with deadlines (never fixed sleeps), collect events.
//
// Environment:
//   SCALEOUT_BIN   the example's binary (go build ./_examples/scale-out);
//                  default: `go run .` in the example's folder.
//   SCALEOUT_ARGS  broker flags for it, e.g. "-redis 127.0.0.1:6379";
//                  default "-broker embedded" (a NATS server in its process).
//   SCALEOUT_URLS  comma-separated http:// URLs of nodes already running:
//                  then nothing is started.
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const exampleDir = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

// startExample starts the example with `nodes` nodes on random loopback
// ports and resolves when every node serves. stop() sends SIGINT (Ctrl-C)
// and resolves with the exit code. prefix and brokerArgs join another
// example's cluster (its prefix; brokerArgs replace $SCALEOUT_ARGS).
export async function startExample({ nodes = 3, deadlineMs = 180_000, prefix = "", brokerArgs = null } = {}) {
  if (process.env.SCALEOUT_URLS) {
    const urls = process.env.SCALEOUT_URLS.split(",").map((u) => u.trim()).filter(Boolean);
    return { urls, output: () => "", stop: async () => 0 };
  }
  brokerArgs ??= (process.env.SCALEOUT_ARGS || "-broker embedded").split(/\s+/).filter(Boolean);
  prefix ||= `test-${process.pid}-${Date.now()}`;
  const args = ["-demo=false", "-port", "0", "-nodes", String(nodes), "-prefix", prefix, ...brokerArgs];
  const [cmd, cmdArgs] = process.env.SCALEOUT_BIN
    ? [process.env.SCALEOUT_BIN, args]
    : ["go", ["run", ".", ...args]];
  // Its own process group, so that stop() reaches the binary `go run` starts.
  const child = spawn(cmd, cmdArgs, { cwd: exampleDir, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  const killGroup = (sig) => {
    try {
      process.kill(-child.pid, sig);
    } catch {
      // already gone
    }
  };
  // Never leave it running: also when the runner is interrupted or killed
  // by a timeout (SIGTERM skips "exit" handlers unless handled).
  const onExit = () => killGroup("SIGKILL");
  const onSignal = (sig) => {
    killGroup("SIGKILL");
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.on("exit", onExit);
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  let out = "";
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal)));
  const ready = new Promise((resolve, reject) => {
    const urls = [];
    const timer = setTimeout(() => reject(new Error(`example not ready in ${deadlineMs} ms:\n${out}`)), deadlineMs);
    const onData = (d) => {
      out += d;
      for (const m of out.matchAll(/serving (http:\/\/\S+?)\/? \(websocket/g)) {
        if (!urls.includes(m[1])) urls.push(m[1]);
      }
      if (/ready: \d+ node/.test(out)) {
        clearTimeout(timer);
        resolve(urls);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`example exited (${code}) before it was ready:\n${out}`));
    });
  });
  let urls;
  try {
    urls = await ready;
  } catch (err) {
    killGroup("SIGKILL");
    throw err;
  }
  if (urls.length !== nodes) throw new Error(`want ${nodes} node URLs, got ${urls}:\n${out}`);
  return {
    urls,
    prefix,
    // brokerArgs are the flags for another example to join this one's
    // broker: its embedded NATS server's URL, or the same flags.
    brokerArgs: () => {
      const m = out.match(/embedded in this process at (nats:\/\/\S+)/);
      return m ? ["-nats", m[1]] : brokerArgs;
    },
    // pause and resume stop and continue the process (SIGSTOP, SIGCONT):
    // its nodes stay in the others' lists until NodeExpiry but answer nothing.
    pause: () => killGroup("SIGSTOP"),
    resume: () => killGroup("SIGCONT"),
    output: () => out,
    // stop shuts the example down as Ctrl-C does and resolves with its exit
    // code, or rejects when it does not exit within 20 s.
    async stop() {
      killGroup("SIGCONT");
      killGroup("SIGINT");
      const timer = setTimeout(() => killGroup("SIGKILL"), 20_000);
      const code = await exited;
      clearTimeout(timer);
      process.off("exit", onExit);
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      return code;
    },
  };
}

// waitFor resolves with check()'s first truthy result; check runs now and
// whenever notify() is called, until deadlineMs passes (then it rejects,
// naming what was awaited).
export class Waiter {
  #waiters = new Set();
  notify() {
    for (const w of this.#waiters) w();
  }
  waitFor(check, what, deadlineMs = 10_000) {
    return new Promise((resolve, reject) => {
      const attempt = () => {
        let v;
        try {
          v = check();
        } catch (err) {
          done();
          reject(err);
          return;
        }
        if (v) {
          done();
          resolve(v);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${deadlineMs} ms waiting for ${what}`));
      }, deadlineMs);
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(attempt);
      };
      this.#waiters.add(attempt);
      attempt();
    });
  }
}

// poll calls get() until check(value) holds and resolves with that value;
// every everyMs, until deadlineMs passes (then it rejects, naming what was
// awaited and the last value). For state that is read, not pushed, such as
// the cluster endpoints.
export async function poll(get, check, what, deadlineMs = 10_000, everyMs = 100) {
  const end = Date.now() + deadlineMs;
  let last;
  for (;;) {
    last = await get();
    if (check(last)) return last;
    if (Date.now() >= end) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

// getJSON fetches url and returns {status, body} (body: the parsed JSON).
export async function getJSON(url, init = {}) {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000), ...init });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body };
}
