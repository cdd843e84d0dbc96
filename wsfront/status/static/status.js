// The wsfs status page: polls /-/status/feed.json and redraws.
// Served under a strict CSP with Trusted Types: every value from the feed
// (paths and user names included) goes into text nodes, never markup.
"use strict";

(function () {
  // Absolute URLs on the origin: a page opened as http://user:pass@host/...
  // has a document URL with credentials, and fetch() refuses URLs that
  // resolve to one.  The browser keeps the login for the origin anyway.
  const FEED = new URL("/-/status/feed.json", window.location.origin).href;
  const REPAIR = new URL("/-/status/repair", window.location.origin).href;
  const POLL_MS = 1000;
  let csrf = null;

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (k.startsWith("data-")) node.dataset[k.slice(5).replace(/-(.)/g, (_, c) => c.toUpperCase())] = v;
        else node[k] = v;
      }
    }
    return node;
  }

  function row(cells, attrs) {
    const tr = el("tr", null, attrs);
    for (const c of cells) {
      const td = c instanceof Node ? el("td") : el("td", c);
      if (c instanceof Node) td.appendChild(c);
      tr.appendChild(td);
    }
    return tr;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function setState(node, state, text) {
    node.dataset.state = state;
    node.textContent = text;
  }

  function renderSummary(feed) {
    const dl = document.getElementById("summary");
    const t = feed.totals;
    const items = [
      ["read", bytes(t.read_bytes)], ["written", bytes(t.write_bytes)],
      ["uploads committed", t.uploads_committed], ["downloads completed", t.reads_completed],
      ["read failovers", t.read_failovers], ["takeovers", t.takeovers],
      ["fenced writes", t.fenced], ["replica drops", t.replica_drops],
      ["under-replicated blobs", feed.under_replicated === null ? "?" : feed.under_replicated],
      ["unavailable blobs", feed.unavailable === null ? "?" : feed.unavailable],
    ];
    dl.replaceChildren();
    for (const [k, v] of items) { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v)); }
  }

  function renderNodes(feed) {
    const body = document.querySelector("#nodes tbody");
    body.replaceChildren();
    for (const n of feed.nodes) {
      const word = n.foreign ? "foreign" : n.up ? "up" : "down";
      const state = el("span", word, { className: "state", "data-state": n.up ? "up" : "down" });
      if (!n.up && n.last_error) state.title = n.last_error;
      const fill = el("meter", null, { min: 0, max: 1, value: n.fill === null ? 0 : n.fill, high: 0.85 });
      const percent = n.fill === null ? "?" : (100 * n.fill).toFixed(1) + " %";
      fill.title = percent;
      const fillCell = el("span");
      fillCell.append(fill, " " + percent);
      const seen = n.seen_ago === null ? "never" : n.seen_ago.toFixed(1) + " s ago";
      body.appendChild(row([n.name, state, fillCell, bytes(n.free_bytes), seen], { "data-node": n.name }));
    }
  }

  function renderFrontEnds(feed) {
    const body = document.querySelector("#front-ends tbody");
    body.replaceChildren();
    for (const f of feed.front_ends) {
      body.appendChild(row([f.name + (f.this ? " (this one)" : ""), f.active, f.interrupted], { "data-front-end": f.name }));
    }
  }

  function renderSessions(feed) {
    const body = document.querySelector("#sessions tbody");
    body.replaceChildren();
    for (const s of feed.sessions) {
      const max = s.size || Math.max(s.offset, 1);
      const bar = el("progress", null, { max: max, value: Math.min(s.offset, max) });
      bar.title = s.size ? (100 * s.offset / s.size).toFixed(1) + " %" : "size not declared";
      const tr = row([s.path, s.user, bar, bytes(s.offset) + (s.size ? " / " + bytes(s.size) : ""),
        bytes(s.durable), bytes(Math.round(s.rate)) + "/s", s.replicas.join(", ")],
      { "data-upload": s.upload_id, "data-offset": String(s.offset) });
      tr.firstChild.className = "path";
      body.appendChild(tr);
    }
    document.getElementById("no-sessions").hidden = feed.sessions.length > 0;
  }

  function describe(e) {
    const d = e.detail || {};
    switch (e.kind) {
      case "failover": return "read of " + d.blob + " moved to " + d.to + " at byte " + d.at;
      case "takeover": return "upload " + d.upload + " taken over by " + d.front_end + " at " + d.offset + " (epoch " + d.epoch + ")";
      case "fenced": return "upload " + d.upload + " fenced: another front end owns it";
      case "replica-dropped": return "upload " + d.upload + " lost replica " + d.node;
      default: return JSON.stringify(d);
    }
  }

  function renderEvents(feed) {
    const list = document.getElementById("events");
    list.replaceChildren();
    for (const e of feed.events) {
      const li = el("li", null, { "data-kind": e.kind });
      li.appendChild(el("time", new Date(e.at * 1000).toLocaleTimeString()));
      li.appendChild(document.createTextNode(" "));
      li.appendChild(el("span", e.kind, { className: "kind" }));
      li.appendChild(document.createTextNode(" " + describe(e)));
      list.appendChild(li);
    }
    if (!feed.events.length) list.appendChild(el("li", "nothing yet", { "data-kind": "none" }));
  }

  function renderChart(feed) {
    const canvas = document.getElementById("chart");
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 24;
    const tp = feed.throughput;
    ctx.clearRect(0, 0, w, h);
    const span = Math.max(60, -Math.min(0, ...tp.t));
    const top = Math.max(1, ...tp.read, ...tp.write);
    ctx.fillStyle = "#5a6470";
    ctx.font = "11px sans-serif";
    ctx.fillText(bytes(top) + "/s", 2, 11);
    ctx.fillText("-" + Math.round(span) + " s", 2, h - 4);
    ctx.fillText("now", w - 24, h - 4);
    const x = (t) => pad + (w - 2 * pad) * (1 + t / span);
    const y = (v) => h - pad - (h - 2 * pad) * (v / top);
    for (const [key, colour] of [["read", "#0969da"], ["write", "#1a7f37"]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.beginPath();
      tp.t.forEach((t, i) => (i ? ctx.lineTo(x(t), y(tp[key][i])) : ctx.moveTo(x(t), y(tp[key][i]))));
      ctx.stroke();
    }
    canvas.dataset.points = String(tp.t.length);
  }

  function render(feed) {
    csrf = feed.csrf;
    document.getElementById("front-end").textContent = feed.front_end;
    document.getElementById("repair").disabled = false;
    renderSummary(feed);
    renderNodes(feed);
    renderFrontEnds(feed);
    renderSessions(feed);
    renderEvents(feed);
    renderChart(feed);
    document.body.dataset.updated = String(feed.now);
  }

  async function poll() {
    const conn = document.getElementById("connection");
    try {
      const answer = await fetch(FEED, { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401 || answer.status === 403) {
        setState(conn, "error", answer.status === 401
          ? "not logged in: reload the page to log in as an administrator"
          : "this account is not an administrator");
      } else if (!answer.ok) {
        setState(conn, "error", "feed answered " + answer.status);
      } else {
        render(await answer.json());
        setState(conn, "live", "live, updated " + new Date().toLocaleTimeString());
      }
    } catch (err) {
      setState(conn, "error", "front end unreachable: " + err.message);
    }
    window.setTimeout(poll, POLL_MS);
  }

  async function repair() {
    const out = document.getElementById("repair-result");
    try {
      const answer = await fetch(REPAIR, {
        method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf || "" },
      });
      const text = answer.ok ? "repair job " + (await answer.json()).job_id + " queued" : "refused: " + answer.status;
      out.textContent = text;
    } catch (err) {
      out.textContent = "failed: " + err.message;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("repair").addEventListener("click", repair);
    poll();
  });
})();
