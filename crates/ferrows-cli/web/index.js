// The landing page: shows each demo's WebSocket URL on this host.
"use strict";

for (const node of document.querySelectorAll("[data-ws-path]")) {
  node.textContent = ferrows.wsUrl(node.dataset.wsPath);
}
