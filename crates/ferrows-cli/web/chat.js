// The chat page: the server's tick, the log, and a line to send. The wire
// format is text `cmd:data` split at the first colon: `tick:<n>` and
// `msg:<text>` from the server; a client sends the raw text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_LOG = 500;
  // Joins and leaves (`3`, or `3@web1:9002` when the room spans servers)
  // and the backplane's notices (`serve chat --redis`).
  const NOTICE =
    /^\* (client \d+(@[A-Za-z0-9._:-]+)? (joined|left)|lost contact with the other servers: .*|back in contact with the other servers|\d+ messages from other servers were lost)$/;

  let ws = null;

  function log(kind, body, detail) {
    const entry = ferrows.el("div", "entry " + kind);
    entry.appendChild(ferrows.el("span", "time", ferrows.clock()));
    entry.appendChild(ferrows.el("span", "body", body));
    if (detail) entry.appendChild(ferrows.el("span", "meta", detail));
    ferrows.appendBounded($("chat-log"), entry, MAX_LOG);
  }

  function setState(state, text) {
    ferrows.setStatus($("status"), state, text);
    $("chat-send").disabled = state !== "open";
    $("reconnect").disabled = state !== "closed";
  }

  function onText(text) {
    const colon = text.indexOf(":");
    const cmd = colon < 0 ? text : text.slice(0, colon);
    const data = colon < 0 ? "" : text.slice(colon + 1);
    if (cmd === "tick") {
      $("tick").textContent = data;
      return;
    }
    if (cmd === "msg") {
      log(NOTICE.test(data) ? "notice" : "received", data);
      return;
    }
    log("event", text, "unknown command " + JSON.stringify(cmd));
  }

  function connect() {
    $("chat-error").textContent = "";
    const url = ferrows.wsUrl(location.pathname);
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (e) {
      $("chat-error").textContent = "Cannot connect: " + e.message;
      return;
    }
    ws = socket;
    setState("connecting", "connecting");
    socket.addEventListener("open", () => {
      if (ws !== socket) return;
      setState("open", "open");
      log("event", "connected to " + url);
      $("chat-input").focus();
    });
    socket.addEventListener("message", (ev) => {
      if (ws !== socket) return;
      if (typeof ev.data === "string") onText(ev.data);
    });
    socket.addEventListener("close", (ev) => {
      if (ws !== socket) return;
      ws = null;
      setState("closed", "closed " + ev.code);
      const reason = ev.reason ? " reason " + JSON.stringify(ev.reason) : "";
      log("event", "disconnected: code " + ferrows.closeName(ev.code) + reason);
    });
  }

  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("chat-input").value;
    if (!text || !ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(text);
    $("chat-input").value = "";
  });
  $("reconnect").addEventListener("click", connect);
  setState("closed", "closed");
  connect();
})();
