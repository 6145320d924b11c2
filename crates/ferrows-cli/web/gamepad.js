// The gamepad page: reads the first gamepad (Gamepad API, polled every
// animation frame), the keyboard (arrows/WASD, space = button 0) or the
// touch joystick, and sends {"type":"pad",...} on every change and at
// least every 100 ms while driving. Shows the link, the round trip, who
// drives, the robot's outputs, and why the server stopped it. Everything
// from the network is shown with textContent.
"use strict";

(() => {
  const KEEPALIVE_MS = 100;   // while driving, a message at least this often
  const MIN_GAP_MS = 15;      // at most ~60 messages a second on changes
  const PING_MS = 1000;       // round-trip measurement
  const STALE_MS = 600;       // no telemetry for this long: the link is stale
  const SHOWN_AXES = 4;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"), banner: $("banner"), you: $("you"), role: $("role"),
    driver: $("driver"), rtt: $("rtt"), source: $("source"), clients: $("clients"),
    release: $("release"), tokenForm: $("token-form"), token: $("token"),
    error: $("error"), stick: $("stick"), knob: $("knob"), axes: $("axes"),
    buttons: $("buttons"), fire: $("fire"), left: $("left"), right: $("right"),
    leftBar: $("left-bar"), rightBar: $("right-bar"), outputs: $("outputs"),
  };

  // ------------------------------------------------------------ state

  let ws = null;
  let myId = null;
  let role = null;            // "driver" | "viewer" | null (unknown)
  let driver = null;
  let buttonCount = 17;
  let seq = 0;
  let lastSentAt = 0;
  let lastSentKey = null;
  let lastInputKey = null;    // the input as last observed (for viewers: send on change)
  let lastTelemetryAt = 0;
  let stopText = null;        // the server's reason, while the robot is stopped
  let reconnectDelay = 500;
  let pingId = 0;
  const pings = new Map();

  const keys = new Set();
  const touch = { active: false, x: 0, y: 0, pointer: null };
  let fireHeld = false;

  // ------------------------------------------------------------ input

  function firstGamepad() {
    if (!navigator.getGamepads) return null;
    let pads;
    try { pads = navigator.getGamepads(); } catch (e) { return null; }
    if (!pads) return null;
    for (const p of pads) if (p && p.connected !== false) return p;
    return null;
  }

  function clamp1(v) {
    v = Number(v);
    if (!isFinite(v)) return 0;
    return Math.max(-1, Math.min(1, v));
  }

  /** The input now: {axes, buttons, source}. */
  function readInput() {
    const pad = firstGamepad();
    let axes = [0, 0];
    let buttons = new Array(buttonCount).fill(0);
    let source = "none";
    if (pad) {
      axes = Array.from(pad.axes || [], clamp1);
      while (axes.length < 2) axes.push(0);
      const bs = pad.buttons || [];
      for (let i = 0; i < Math.min(bs.length, 64); i++) {
        const b = bs[i];
        const v = typeof b === "number" ? b : (b && (b.pressed ? Math.max(b.value || 0, 1) : (b.value || 0)));
        buttons[i] = Math.max(0, Math.min(1, Number(v) || 0));
      }
      source = "gamepad";
    }
    const kx = (keys.has("right") ? 1 : 0) - (keys.has("left") ? 1 : 0);
    const ky = (keys.has("down") ? 1 : 0) - (keys.has("up") ? 1 : 0);
    if (touch.active) {
      axes[0] = touch.x; axes[1] = touch.y; source = "touch";
    } else if (kx !== 0 || ky !== 0) {
      axes[0] = kx; axes[1] = ky; source = "keyboard";
    }
    if (keys.has("fire") || fireHeld) {
      buttons[0] = 1;
      if (source === "none") source = keys.has("fire") ? "keyboard" : "touch";
    }
    return { axes, buttons, source };
  }

  const round = (v, digits) => Number(v.toFixed(digits));

  /** A key that changes only when what we would send changes. */
  function inputKey(input) {
    return input.axes.map((a) => round(a, 2)).join(",") + "|" + input.buttons.map((b) => round(b, 2)).join(",");
  }

  function isNeutral(input) {
    return input.axes.every((a) => Math.abs(a) < 0.05) && input.buttons.every((b) => b < 0.5);
  }

  function send(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  function sendPad(input, now) {
    seq += 1;
    const ok = send({
      type: "pad",
      seq,
      axes: input.axes.map((a) => round(a, 3)),
      buttons: input.buttons.map((b) => round(b, 2)),
    });
    if (ok) {
      lastSentAt = now;
      lastSentKey = inputKey(input);
    }
  }

  /** One poll: every animation frame, and from a timer (keep-alives go on
   * while the tab renders no frames). */
  function poll() {
    const now = performance.now();
    const input = readInput();
    showInput(input);
    const key = inputKey(input);
    const changed = key !== lastInputKey;
    lastInputKey = key;
    if (role === "driver") {
      const due = now - lastSentAt >= KEEPALIVE_MS;
      if ((key !== lastSentKey && now - lastSentAt >= MIN_GAP_MS) || due) sendPad(input, now);
    } else if (changed && !isNeutral(input)) {
      // A viewer sends only when its user moves something: that takes a
      // free lease (letting go never does), and otherwise the server
      // says who drives.
      sendPad(input, now);
    }
    checkStale(now);
  }

  function frame() {
    poll();
    requestAnimationFrame(frame);
  }

  const KEYMAP = {
    ArrowUp: "up", KeyW: "up", ArrowDown: "down", KeyS: "down",
    ArrowLeft: "left", KeyA: "left", ArrowRight: "right", KeyD: "right", Space: "fire",
  };

  function onKey(down, e) {
    if (e.target && (e.target.tagName === "INPUT" || e.target.tagName === "TEXTAREA")) return;
    const k = KEYMAP[e.code];
    if (!k) return;
    e.preventDefault();
    if (down) keys.add(k); else keys.delete(k);
    poll();
  }
  window.addEventListener("keydown", (e) => onKey(true, e));
  window.addEventListener("keyup", (e) => onKey(false, e));
  // Keys held while the page loses focus never see their keyup.
  function letGo() {
    keys.clear();
    fireHeld = false;
    endTouch();
    poll();
  }
  window.addEventListener("blur", letGo);
  document.addEventListener("visibilitychange", () => { if (document.hidden) letGo(); });
  window.addEventListener("gamepaddisconnected", () => poll());
  window.addEventListener("gamepadconnected", () => poll());

  // The touch joystick.
  function moveTouch(e) {
    const r = ui.stick.getBoundingClientRect();
    const radius = r.width / 2;
    let x = (e.clientX - (r.left + radius)) / radius;
    let y = (e.clientY - (r.top + radius)) / radius;
    const len = Math.hypot(x, y);
    if (len > 1) { x /= len; y /= len; }
    touch.x = x; touch.y = y;
    placeKnob(x, y);
    poll();
  }
  function endTouch() {
    if (!touch.active) return;
    touch.active = false; touch.pointer = null; touch.x = 0; touch.y = 0;
    placeKnob(0, 0);
  }
  function placeKnob(x, y) {
    const len = Math.hypot(x, y);
    if (len > 1) { x /= len; y /= len; }
    const r = ui.stick.clientWidth / 2 - ui.knob.offsetWidth / 2;
    ui.knob.style.transform = "translate(" + (x * r).toFixed(1) + "px," + (y * r).toFixed(1) + "px)";
  }
  ui.stick.addEventListener("pointerdown", (e) => {
    touch.active = true; touch.pointer = e.pointerId;
    try { ui.stick.setPointerCapture(e.pointerId); } catch (err) { /* not capturable */ }
    moveTouch(e);
  });
  ui.stick.addEventListener("pointermove", (e) => { if (touch.active && e.pointerId === touch.pointer) moveTouch(e); });
  for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) {
    ui.stick.addEventListener(ev, () => { endTouch(); poll(); });
  }
  const fire = (on) => (e) => { e.preventDefault(); fireHeld = on; ui.fire.dataset.on = String(on); poll(); };
  ui.fire.addEventListener("pointerdown", fire(true));
  for (const ev of ["pointerup", "pointercancel", "pointerleave"]) ui.fire.addEventListener(ev, fire(false));

  // ------------------------------------------------------------ display

  function lamps(container, count, prefix) {
    while (container.childElementCount > count) container.removeChild(container.lastElementChild);
    while (container.childElementCount < count) {
      const i = container.childElementCount;
      const lamp = ferrows.el("span", "gp-lamp", prefix + i);
      lamp.dataset.on = "false";
      container.appendChild(lamp);
    }
  }

  function setLamps(container, values) {
    const n = Math.min(container.childElementCount, values.length);
    for (let i = 0; i < n; i++) container.children[i].dataset.on = String(Boolean(values[i]));
  }

  const axisRows = [];
  for (let i = 0; i < SHOWN_AXES; i++) {
    const name = ferrows.el("span", null, "axis " + i);
    const bar = ferrows.el("div", "gp-axis-bar");
    const fill = ferrows.el("div");
    bar.appendChild(fill);
    const value = ferrows.el("span", null, "0.00");
    ui.axes.append(name, bar, value);
    axisRows.push({ fill, value });
  }

  function fillBar(node, v) {
    const w = Math.abs(v) * 50;
    node.style.width = w.toFixed(1) + "%";
    node.style.left = (v < 0 ? 50 - w : 50).toFixed(1) + "%";
  }

  function showInput(input) {
    for (let i = 0; i < SHOWN_AXES; i++) {
      const v = input.axes[i] || 0;
      fillBar(axisRows[i].fill, v);
      axisRows[i].value.textContent = (v >= 0 ? " " : "") + v.toFixed(2);
    }
    setLamps(ui.buttons, input.buttons.map((b) => b >= 0.5));
    if (!touch.active) placeKnob(input.axes[0] || 0, input.axes[1] || 0);
    if (ui.source.textContent !== input.source) ui.source.textContent = input.source;
  }

  function showOutputs(t) {
    const left = Number(t.left) || 0;
    const right = Number(t.right) || 0;
    ui.left.textContent = left.toFixed(3);
    ui.right.textContent = right.toFixed(3);
    fillBar(ui.leftBar, left);
    fillBar(ui.rightBar, right);
    ui.leftBar.dataset.dir = left < 0 ? "back" : "fwd";
    ui.rightBar.dataset.dir = right < 0 ? "back" : "fwd";
    if (Array.isArray(t.buttons)) {
      lamps(ui.outputs, Math.min(t.buttons.length, 64), "");
      setLamps(ui.outputs, t.buttons);
    }
  }

  function banner(kind, text) {
    ui.banner.dataset.kind = kind;
    if (ui.banner.textContent !== text) ui.banner.textContent = text;
  }

  function showRole() {
    ui.role.textContent = role || "–";
    ui.driver.textContent = driver === null || driver === undefined ? "none" : driver === myId ? "you (" + driver + ")" : "client " + driver;
    ui.release.disabled = role !== "driver";
    if (stopText) banner("stopped", stopText);
    else if (role === "driver") banner("driving", "You are driving");
    else if (driver !== null && driver !== undefined) banner("viewer", "Viewer: another driver has control (client " + driver + ")");
    else banner("idle", "Nobody drives: move the stick, press a key or drag the joystick to take control");
  }

  let errorCode = null;
  function setError(text, code) {
    errorCode = text ? code || null : null;
    ui.error.textContent = text || "";
  }

  function checkStale(now) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (lastTelemetryAt && now - lastTelemetryAt > STALE_MS) {
      ferrows.setStatus(ui.status, "connecting", "stale link");
    }
  }

  // ------------------------------------------------------------ the link

  function url() {
    // With the page's ?token= and ?drive_token=.
    return ferrows.wsUrl(location.pathname || "/");
  }

  function onMessage(ev) {
    if (typeof ev.data !== "string") return;
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    if (!m || typeof m !== "object") return;
    switch (m.type) {
      case "hello":
        myId = m.id;
        role = m.role;
        driver = m.driver;
        buttonCount = Math.max(0, Math.min(64, Number(m.buttons) || 0));
        lamps(ui.buttons, buttonCount, "");
        ui.you.textContent = "client " + m.id;
        ui.tokenForm.hidden = !m.token_required;
        showRole();
        break;
      case "role":
        role = m.role;
        driver = m.driver;
        if (role === "driver") { stopText = null; setError(""); }
        showRole();
        break;
      case "stop":
        stopText = String(m.text || "STOPPED");
        showRole();
        break;
      case "error":
        setError(String(m.text || m.code || "error"), String(m.code || ""));
        if (m.code === "not_driver") { role = "viewer"; showRole(); }
        break;
      case "pong": {
        const sent = pings.get(m.id);
        if (sent !== undefined) {
          pings.delete(m.id);
          ui.rtt.textContent = ferrows.ms(performance.now() - sent);
        }
        break;
      }
      case "telemetry":
        lastTelemetryAt = performance.now();
        if (ui.status.dataset.state !== "open") ferrows.setStatus(ui.status, "open", "connected");
        driver = m.driver;
        if (driver !== myId && role === "driver") role = "viewer";
        stopText = m.stopped ? String(m.stop_text || "STOPPED") : null;
        // "Another driver has control" is over once no one else drives.
        if (errorCode === "not_driver" && (driver === null || driver === myId)) setError("");
        ui.clients.textContent = String(m.clients);
        showOutputs(m);
        showRole();
        break;
      default:
        break;
    }
  }

  function connect() {
    ferrows.setStatus(ui.status, "connecting", "connecting");
    let sock;
    try { sock = new WebSocket(url()); } catch (e) { setError(String(e.message || e)); return; }
    ws = sock;
    sock.onopen = () => {
      reconnectDelay = 500;
      ferrows.setStatus(ui.status, "open", "connected");
      setError("");
      lastSentKey = null;
      lastInputKey = inputKey({ axes: [0, 0], buttons: new Array(buttonCount).fill(0) });
      ping();
    };
    sock.onmessage = onMessage;
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      role = null;
      lastTelemetryAt = 0;
      ferrows.setStatus(ui.status, "closed", "closed " + ferrows.closeName(ev.code));
      stopText = "STOPPED: link lost (reconnecting…)";
      showRole();
      setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 5000);
    };
  }

  ui.release.addEventListener("click", () => {
    // Stop driving at once: a keep-alive sent before the server's answer
    // arrives (every 100 ms while a key is held) would reach a free lease
    // and take control straight back.
    if (role === "driver") { role = "viewer"; showRole(); }
    send({ type: "release" });
  });
  ui.tokenForm.addEventListener("submit", (e) => {
    e.preventDefault();
    send({ type: "auth", token: ui.token.value });
  });

  function ping() {
    pingId += 1;
    if (send({ type: "ping", id: pingId })) pings.set(pingId, performance.now());
    for (const [id, t] of pings) if (performance.now() - t > 10000) pings.delete(id);
  }
  setInterval(ping, PING_MS);
  // Keep-alives also when no frames are drawn (a covered window).
  setInterval(poll, KEEPALIVE_MS / 2);

  lamps(ui.buttons, buttonCount, "");
  placeKnob(0, 0);
  connect();
  requestAnimationFrame(frame);
})();
