/*
 * demo.js: what the demo pages (ticker, auction, election) share: a
 * CometGate client whose transport the page's selector picks, the
 * connection state and transport in the header, and the notice a page
 * shows when the gateway says updates may have been missed. It uses only
 * cometgate.js's public API.
 */
(function () {
  "use strict";

  // The transports the selector offers, as cometgate.js names them.
  const TRANSPORTS = ["auto", "websocket", "sse", "xhr_stream", "poll"];
  const LABELS = { auto: "auto", websocket: "WebSocket", sse: "SSE", xhr_stream: "XHR streaming", poll: "long-polling" };

  // client makes the page's CometGate. The transport comes from the URL
  // (?transport=poll), so a forced transport survives a reload and can be
  // linked to; the selector (#transport) reloads the page with its choice.
  function client() {
    const params = new URLSearchParams(location.search);
    let transport = params.get("transport") || "auto";
    if (!TRANSPORTS.includes(transport)) transport = "auto";
    const select = document.getElementById("transport");
    if (select) {
      for (const t of TRANSPORTS) select.append(new Option(LABELS[t], t));
      select.value = transport;
      select.addEventListener("change", () => {
        const p = new URLSearchParams(location.search);
        if (select.value === "auto") p.delete("transport");
        else p.set("transport", select.value);
        const q = p.toString();
        location.search = q ? "?" + q : "";
      });
    }
    const cg = new CometGate({ transports: transport === "auto" ? "auto" : [transport] });
    const pill = document.getElementById("state");
    cg.on("state", (state, info) => {
      pill.className = "pill " + state;
      let text = state;
      if (state === "connected") text += " · " + info.transport;
      else if (state === "connecting" && info.transport) text += " · trying " + info.transport;
      else if (state === "disconnected" && info.delay !== undefined) text += " · retrying in " + Math.ceil(info.delay / 1000) + " s";
      pill.textContent = text;
      pill.dataset.transport = cg.transport || "";
      if (state === "closed") notice("The gateway closed this page's session for good (" + info.code + " " + info.reason + "). Reload the page.");
    });
    return cg;
  }

  // notice shows text in the page's #notice (a "may have missed updates"
  // banner) and counts how often it was shown.
  let shown = 0;
  function notice(text) {
    const el = document.getElementById("notice");
    if (!el) return;
    shown++;
    el.hidden = false;
    el.dataset.count = String(shown);
    el.querySelector(".text").textContent = text;
  }

  // watchGaps shows a notice when the gateway reports a gap on sub: what
  // was published meanwhile may be missing from the page.
  function watchGaps(sub, what) {
    sub.on("gap", (info) => {
      notice("The gateway says this page may have missed " + what + " (" + (info.reason || "gap") + "); " +
        "what is shown may be out of date until the next update.");
    });
    sub.on("error", (err) => {
      notice("Subscribing to " + sub.channel + " failed: " + err.code + " " + err.message + (err.retrying ? " (retrying)" : ""));
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const el = document.getElementById("notice");
    if (el) {
      const close = el.querySelector("button");
      if (close) close.addEventListener("click", () => { el.hidden = true; });
    }
  });

  window.Demo = { client: client, notice: notice, watchGaps: watchGaps };
})();
