// The landing page: shows each demo's WebSocket URL on this host.
"use strict";

for (const node of document.querySelectorAll("[data-ws-path]")) {
  node.textContent = ferrows.wsUrl(node.dataset.wsPath);
}

// The demos' pages keep this page's token, so that their WebSockets get it.
for (const link of document.querySelectorAll("a.demo")) {
  link.href = link.getAttribute("href") + ferrows.credentials();
}
