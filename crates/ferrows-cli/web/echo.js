// The echo console: connect, send text / JSON / binary, see every message
// with its direction, time and round-trip time, close with a code and reason.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_LOG = 1000;
  // Longer payloads are cut in the log (the whole message is still sent
  // and counted): characters of text, bytes of binary.
  const MAX_TEXT_SHOWN = 2000;
  const MAX_BYTES_SHOWN = 512;
  const HINTS = {
    text: "Sent as a text message.",
    json: "Checked with JSON.parse, sent as text as typed.",
    binary: "Hex bytes, e.g. 48 65 6c 6c 6f or 0x48,0x65; sent as a binary message.",
  };

  let ws = null;
  // Send times of messages awaiting their echo, oldest first.
  let pending = [];
  let sent = 0;
  let received = 0;
  let rttSum = 0;
  let rttCount = 0;
  let rttMin = Infinity;
  let rttMax = -Infinity;

  $("url").value = ferrows.wsUrl(location.pathname);

  function mode() {
    const checked = document.querySelector('input[name="mode"]:checked');
    return checked ? checked.value : "text";
  }

  function showMode() {
    $("mode-hint").textContent = HINTS[mode()];
    $("send-error").textContent = "";
  }

  function log(kind, dir, body, meta) {
    const entry = ferrows.el("div", "entry " + kind);
    entry.appendChild(ferrows.el("span", "time", ferrows.clock()));
    entry.appendChild(ferrows.el("span", "dir", dir));
    const content = ferrows.el("span", "body");
    if (meta && meta.badge) content.appendChild(ferrows.el("span", "badge", meta.badge));
    const { shown, omitted } = ferrows.clip(body, MAX_TEXT_SHOWN);
    content.appendChild(document.createTextNode(shown));
    if (omitted > 0) content.appendChild(ferrows.el("span", "omitted", " … " + omitted + " more characters not shown"));
    entry.appendChild(content);
    if (meta && meta.detail) entry.appendChild(ferrows.el("span", "meta", meta.detail));
    ferrows.appendBounded($("log"), entry, MAX_LOG);
    return entry;
  }

  /** Hex of at most MAX_BYTES_SHOWN bytes, noting the rest. */
  function hexShown(bytes) {
    const hex = ferrows.toHex(bytes.subarray(0, MAX_BYTES_SHOWN));
    const more = bytes.length - MAX_BYTES_SHOWN;
    return more > 0 ? hex + " … " + more + " more bytes" : hex;
  }

  function setConnected(state, text) {
    ferrows.setStatus($("status"), state, text);
    const open = state === "open";
    $("send").disabled = !open;
    $("disconnect").disabled = !(open || state === "connecting");
    $("connect").disabled = state === "open" || state === "connecting" || state === "closing";
  }

  function updateStats() {
    $("count-sent").textContent = String(sent);
    $("count-recv").textContent = String(received);
    if (rttCount > 0) {
      $("rtt-avg").textContent = ferrows.ms(rttSum / rttCount);
      $("rtt-range").textContent = ferrows.msRange(rttMin, rttMax);
    }
  }

  function connect() {
    $("conn-error").textContent = "";
    const url = $("url").value.trim();
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (e) {
      $("conn-error").textContent = "Cannot connect: " + e.message;
      return;
    }
    socket.binaryType = "arraybuffer";
    ws = socket;
    pending = [];
    setConnected("connecting", "connecting");
    log("event", "•", "connecting to " + url);

    socket.addEventListener("open", () => {
      if (ws !== socket) return;
      setConnected("open", "open");
      const ext = socket.extensions ? "extensions: " + socket.extensions : "no extensions";
      log("event", "•", "open", { detail: ext });
    });

    socket.addEventListener("message", (ev) => {
      if (ws !== socket) return;
      const now = performance.now();
      received += 1;
      const started = pending.shift();
      const rtt = started === undefined ? null : now - started;
      if (rtt !== null) {
        rttSum += rtt;
        rttCount += 1;
        rttMin = Math.min(rttMin, rtt);
        rttMax = Math.max(rttMax, rtt);
        $("rtt").textContent = ferrows.ms(rtt);
      }
      let body;
      let badge;
      let size;
      if (typeof ev.data === "string") {
        body = ev.data;
        badge = "text";
        size = new TextEncoder().encode(ev.data).length;
        try {
          const parsed = JSON.parse(ev.data);
          if (parsed !== null && typeof parsed === "object") badge = "json";
        } catch (_) {
          // Not JSON: plain text.
        }
      } else {
        const bytes = new Uint8Array(ev.data);
        body = hexShown(bytes);
        badge = "binary";
        size = bytes.length;
      }
      const detail = size + " bytes" + (rtt === null ? "" : " · rtt " + ferrows.ms(rtt));
      log("received", "←", body, { badge, detail });
      updateStats();
    });

    socket.addEventListener("error", () => {
      if (ws !== socket) return;
      log("failure", "!", "connection error (details are in the browser console)");
    });

    socket.addEventListener("close", (ev) => {
      if (ws !== socket) return;
      ws = null;
      pending = [];
      setConnected("closed", "closed " + ev.code);
      const reason = ev.reason ? "reason " + JSON.stringify(ev.reason) : "no reason";
      const clean = ev.wasClean ? "clean" : "not clean";
      log("event", "•", "closed: code " + ferrows.closeName(ev.code), { detail: reason + " · " + clean });
    });
  }

  function send() {
    $("send-error").textContent = "";
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      $("send-error").textContent = "Not connected.";
      return;
    }
    const raw = $("payload").value;
    let data;
    let shown;
    let badge = mode();
    let size;
    try {
      if (badge === "json") {
        JSON.parse(raw);
        data = raw;
      } else if (badge === "binary") {
        data = ferrows.parseHex(raw);
      } else {
        data = raw;
      }
    } catch (e) {
      $("send-error").textContent = (badge === "json" ? "Invalid JSON: " : "Invalid hex: ") + e.message;
      return;
    }
    if (data instanceof Uint8Array) {
      shown = hexShown(data);
      size = data.length;
    } else {
      shown = data;
      size = new TextEncoder().encode(data).length;
    }
    pending.push(performance.now());
    ws.send(data);
    sent += 1;
    log("sent", "→", shown, { badge, detail: size + " bytes" });
    updateStats();
  }

  function disconnect() {
    if (!ws) return;
    const code = Number($("close-code").value || 1000);
    const reason = $("close-reason").value;
    $("conn-error").textContent = "";
    if (new TextEncoder().encode(reason).length > 123) {
      $("conn-error").textContent = "The close reason is limited to 123 bytes.";
      return;
    }
    try {
      ws.close(code, reason);
    } catch (e) {
      // The browser allows only 1000 and 3000-4999 here.
      $("conn-error").textContent = "Cannot close with code " + code + ": " + e.message;
      return;
    }
    setConnected("closing", "closing");
    log("event", "•", "closing with " + ferrows.closeName(code), { detail: reason ? "reason " + JSON.stringify(reason) : "no reason" });
  }

  $("connect").addEventListener("click", connect);
  $("disconnect").addEventListener("click", disconnect);
  $("send").addEventListener("click", send);
  $("clear").addEventListener("click", () => {
    $("log").replaceChildren();
  });
  $("payload").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      send();
    }
  });
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", showMode);
  }
  showMode();
  setConnected("closed", "closed");
  connect();
})();
