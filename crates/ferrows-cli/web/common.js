// Helpers shared by ferrows' pages. Everything shown from the network goes
// through textContent: peer data is never parsed as HTML.
"use strict";

const ferrows = (() => {
  /** Creates an element with an optional class and text (as text, never HTML). */
  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  /**
   * The credentials of this page's own URL (`?token=`, the server's
   * connection token; `?drive_token=`, the gamepad's driving token) as a
   * query string for a URL on the same server: "" or "?token=...".
   */
  function credentials() {
    const mine = new URLSearchParams(location.search);
    const out = new URLSearchParams();
    for (const name of ["token", "drive_token"]) {
      const value = mine.get(name);
      if (value) out.set(name, value);
    }
    const query = out.toString();
    return query ? "?" + query : "";
  }

  /**
   * The ws:// or wss:// URL of `path` on the server that served this page,
   * with the page's credentials (a token-protected server refuses the
   * WebSocket without them; the page itself is public).
   */
  function wsUrl(path) {
    if (location.protocol !== "http:" && location.protocol !== "https:") {
      return "ws://localhost:9001" + path;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + path + credentials();
  }

  function pad(n, width) {
    return String(n).padStart(width, "0");
  }

  /** HH:MM:SS.mmm in local time. */
  function clock(date) {
    const d = date || new Date();
    return pad(d.getHours(), 2) + ":" + pad(d.getMinutes(), 2) + ":" +
      pad(d.getSeconds(), 2) + "." + pad(d.getMilliseconds(), 3);
  }

  /** Bytes as space-separated hex pairs. */
  function toHex(bytes) {
    const out = new Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = pad(bytes[i].toString(16), 2);
    return out.join(" ");
  }

  /**
   * Parses hex input: pairs of hex digits, optionally separated by spaces,
   * commas, colons or dashes, each optionally prefixed by 0x. Throws an
   * Error naming the problem.
   */
  function parseHex(text) {
    const cleaned = text.replace(/0x/gi, "").replace(/[\s,:-]/g, "");
    if (!/^[0-9a-fA-F]*$/.test(cleaned)) {
      const bad = cleaned.match(/[^0-9a-fA-F]/);
      throw new Error("not a hex digit: " + JSON.stringify(bad ? bad[0] : "?"));
    }
    if (cleaned.length % 2 !== 0) {
      throw new Error("odd number of hex digits (" + cleaned.length + ")");
    }
    const bytes = new Uint8Array(cleaned.length / 2);
    for (let i = 0; i < bytes.length; i++) {
      bytes[i] = parseInt(cleaned.substr(i * 2, 2), 16);
    }
    return bytes;
  }

  const CLOSE_NAMES = {
    1000: "Normal Closure",
    1001: "Going Away",
    1002: "Protocol Error",
    1003: "Unsupported Data",
    1005: "No Status Received",
    1006: "Abnormal Closure",
    1007: "Invalid Payload Data",
    1008: "Policy Violation",
    1009: "Message Too Big",
    1010: "Mandatory Extension",
    1011: "Internal Error",
    1012: "Service Restart",
    1013: "Try Again Later",
    1014: "Bad Gateway",
    1015: "TLS Handshake",
  };

  /** "1000 (Normal Closure)". */
  function closeName(code) {
    const name = CLOSE_NAMES[code];
    return name ? code + " (" + name + ")" : String(code);
  }

  /** Milliseconds as a number for display: 0.42, 7.0, 123. */
  function msNumber(value) {
    return value < 1 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : String(Math.round(value));
  }

  /** Formats milliseconds for display: "7.0 ms", or "–" for none. */
  function ms(value) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    return msNumber(value) + " ms";
  }

  /** Formats a range of milliseconds: "6.0–11.9 ms". */
  function msRange(low, high) {
    if (!isFinite(low) || !isFinite(high)) return "–";
    return msNumber(low) + "–" + msNumber(high) + " ms";
  }

  /**
   * Cuts `text` to `max` characters for display; returns the text shown and
   * how many characters were left out.
   */
  function clip(text, max) {
    return text.length <= max ? { shown: text, omitted: 0 } : { shown: text.slice(0, max), omitted: text.length - max };
  }

  /** Sets a status badge: state is connecting, open, closing or closed. */
  function setStatus(node, state, text) {
    node.dataset.state = state;
    node.textContent = text || state;
  }

  /** Appends `entry` to `log`, keeping at most `max` entries, and follows the end if it was there. */
  function appendBounded(log, entry, max) {
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.appendChild(entry);
    while (log.childElementCount > max) log.removeChild(log.firstElementChild);
    if (atEnd) log.scrollTop = log.scrollHeight;
  }

  return { el, wsUrl, credentials, clock, toHex, parseHex, closeName, ms, msRange, clip, setStatus, appendBounded };
})();
