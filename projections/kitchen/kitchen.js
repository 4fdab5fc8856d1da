// OrderStream kitchen screen: a store's open tickets from GET /stores/{store}/tickets, fetched
// every few seconds, in four columns (new, accepted, preparing, ready), each with a timer
// against the store's ETA (else the promised time) and a bump button that sends the next step
// (POST /stores/{store}/orders/{id}/{action}). A change the channel sent after the store
// accepted the order shows on its ticket (data-change) with accept and refuse buttons
// (data-answer: accept-change, refuse-change). No library, no CDN. Every ticket carries
// data-ticket (the order id), data-status and data-urgency, and its button data-bump (the
// action), so a test can read and press them. See docs/dashboard.md, "Kitchen".
(function () {
  "use strict";

  const store = decodeURIComponent(window.location.pathname.split("/")[2] || "");
  const page = new URLSearchParams(window.location.search);
  const refreshSeconds = Math.min(Math.max(Number(page.get("refresh")) || 3, 1), 60);
  const SOON_SECONDS = 5 * 60; // amber this long before the time it is due
  const COLUMN = { prioritised: "new", accepted_by_store: "accepted_by_store",
    preparing: "preparing", ready: "ready" };
  const NEXT = { prioritised: ["accept", "Accept"], accepted_by_store: ["start", "Start"],
    preparing: ["ready", "Ready"], ready: ["handoff", "Hand off"] };
  const ANSWERS = [["accept-change", "Accept change 接受"], ["refuse-change", "Refuse 拒绝"]];
  const HANDOFF_TO = { dine_in: "table", pickup: "customer" }; // else a courier
  const MODES = { dine_in: "堂食 dine-in", pickup: "自取 pickup", delivery: "外卖 delivery",
    ship: "ship" };

  let csrf = null; // a signed-in session's token for commands (GET /me)
  let tickets = [];
  const sent = new Map(); // order id -> the status it was bumped from (until it moves)

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(key, String(value));
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function say(text) {
    document.getElementById("status").textContent = text;
  }

  function bump(name) {
    document.body.dataset[name] = String(Number(document.body.dataset[name] || 0) + 1);
  }

  // The line as projections.orders.ticket_lines prints it, to tell what a revision changed.
  function lineText(line) {
    return line.options ? `${line.quantity}× ${line.name} (${line.options})`
      : `${line.quantity}× ${line.name}`;
  }

  function dueAt(ticket) {
    const due = ticket.ready_by || ticket.promised_at;
    return due ? Date.parse(due) : null;
  }

  function clock(seconds) {
    const s = Math.abs(Math.round(seconds));
    const text = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    return seconds < 0 ? `-${text}` : text;
  }

  function urgency(ticket, now) {
    const due = dueAt(ticket);
    if (due === null) return "ok";
    const left = (due - now) / 1000;
    return left < 0 ? "late" : left < SOON_SECONDS ? "soon" : "ok";
  }

  function timerText(ticket, now) {
    const due = dueAt(ticket);
    if (due === null) return clock((now - Date.parse(ticket.placed_at)) / 1000); // waiting
    const left = (due - now) / 1000;
    return left < 0 ? `late ${clock(-left)}` : clock(left);
  }

  function lineItem(line, kind) {
    const item = el("li", { class: kind || null, "data-line": lineText(line) });
    const quantity = line.measure === String(line.quantity) ? `${line.quantity}×` : line.measure;
    item.append(`${kind === "added" ? "+ " : ""}${quantity} ${line.name}`);
    if (line.options) item.append(el("span", { class: "options" }, line.options));
    return item;
  }

  function card(ticket, now) {
    const node = el("article", { class: "ticket", "data-ticket": ticket.order_id,
      "data-status": ticket.status, "data-urgency": urgency(ticket, now) });
    const top = el("div", { class: "top" });
    const number = ticket.external_id.slice(-4);
    top.append(el("span", {}, `#${number} · ${ticket.channel}`),
      el("span", { class: "timer", "data-timer": "" }, timerText(ticket, now)));
    node.append(top);
    const where = [MODES[ticket.mode] || ticket.mode];
    if (ticket.table_name) where.push(`table ${ticket.table_name}`);
    if (ticket.covers) where.push(`${ticket.covers} covers`);
    node.append(el("div", { class: "where" }, where.join(" · ")));
    const list = el("ul");
    const before = new Set(ticket.amended_from || []);
    const now_lines = new Set(ticket.lines.map(lineText));
    for (const line of ticket.lines) {
      const added = before.size > 0 && !before.has(lineText(line));
      list.append(lineItem(line, added ? "added" : null));
    }
    for (const old of before) {
      if (!now_lines.has(old)) list.append(el("li", { class: "removed", "data-line": old }, old));
    }
    if (before.size > 0) node.append(el("div", { class: "amended" }, "AMENDED 已修改"));
    if (ticket.at_risk) {
      const text = ticket.at_risk.risk === "NOT_ACCEPTED" ? "AT RISK · accept it 请尽快接单"
        : "AT RISK · due soon 即将超时";
      node.append(el("div", { class: "risk", "data-risk": ticket.at_risk.risk,
        title: ticket.at_risk.reason }, text));
    }
    node.append(list);
    if (ticket.change) node.append(changeBox(ticket));
    const [action, label] = NEXT[ticket.status];
    const waiting = sent.get(ticket.order_id) === ticket.status;
    const button = el("button", { type: "button", "data-bump": action }, waiting ? "sent…" : label);
    button.disabled = waiting;
    button.addEventListener("click", () => send(ticket, action, button, label));
    node.append(button);
    return node;
  }

  // The amendment waiting for the store: the lines as they would become, and its answers.
  function changeBox(ticket) {
    const change = ticket.change;
    const box = el("div", { class: "change", "data-change": change.revision });
    box.append(el("div", { class: "amended" }, "CHANGE REQUESTED 顾客修改"));
    const list = el("ul");
    for (const line of change.lines) list.append(lineItem(line, null));
    box.append(list);
    const answered = sent.get(ticket.order_id) === `change:${change.revision}`;
    for (const [answer, label] of ANSWERS) {
      const button = el("button", { type: "button", class: answer, "data-answer": answer },
        answered ? "sent…" : label);
      button.disabled = answered;
      button.addEventListener("click", () => send(ticket, answer, button, label));
      box.append(button);
    }
    return box;
  }

  function draw() {
    const now = Date.now();
    const columns = {};
    for (const section of document.querySelectorAll("[data-column]")) {
      const holder = section.querySelector(".tickets");
      holder.replaceChildren();
      columns[section.dataset.column] = holder;
    }
    for (const ticket of tickets) {
      const column = columns[COLUMN[ticket.status]];
      if (column) column.append(card(ticket, now));
    }
  }

  function tick() {
    const now = Date.now();
    for (const node of document.querySelectorAll("[data-ticket]")) {
      const ticket = tickets.find((t) => t.order_id === node.dataset.ticket);
      if (!ticket) continue;
      node.dataset.urgency = urgency(ticket, now);
      node.querySelector("[data-timer]").textContent = timerText(ticket, now);
    }
  }

  function body(ticket, action) {
    if (action === "accept") {
      const due = dueAt(ticket);
      const minutes = due === null ? 15 : Math.round((due - Date.now()) / 60000);
      return { ready_in_minutes: Math.min(Math.max(minutes, 1), 1440) };
    }
    if (action === "handoff") return { to: HANDOFF_TO[ticket.mode] || "courier" };
    if (action === "accept-change") return { revision: ticket.change.revision };
    if (action === "refuse-change") {
      return { revision: ticket.change.revision, reason_code: "COOKED",
        reason: "already being prepared (kitchen screen)" };
    }
    return {};
  }

  async function send(ticket, action, button, label) {
    button.disabled = true;
    button.textContent = "sent…";
    const headers = { "Content-Type": "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    try {
      const response = await fetch(
        `/stores/${encodeURIComponent(store)}/orders/${encodeURIComponent(ticket.order_id)}/${action}`,
        { method: "POST", headers, body: JSON.stringify(body(ticket, action)),
          credentials: "same-origin" });
      if (response.status !== 202) {
        const problem = await response.json().catch(() => ({}));
        throw new Error(problem.error || `HTTP ${response.status}`);
      }
      const answering = action.endsWith("-change");
      sent.set(ticket.order_id, answering ? `change:${ticket.change.revision}` : ticket.status);
      say(`#${ticket.external_id.slice(-4)}: ${action} sent`);
      window.setTimeout(refresh, 500);
    } catch (error) {
      bump("errors");
      button.disabled = false;
      button.textContent = label;
      say(`#${ticket.external_id.slice(-4)}: ${action} failed: ${error.message}`);
    }
  }

  async function refresh() {
    try {
      const response = await fetch(`/stores/${encodeURIComponent(store)}/tickets`,
        { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        throw new Error(problem.error || `HTTP ${response.status}`);
      }
      tickets = (await response.json()).tickets;
      for (const [id, status] of sent) {
        const ticket = tickets.find((t) => t.order_id === id);
        const now = ticket && ticket.change ? `change:${ticket.change.revision}` : null;
        if (!ticket || (ticket.status !== status && now !== status)) sent.delete(id); // moved on
      }
      draw();
      bump("refreshes");
      say(`${tickets.length} open · updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      bump("errors");
      say(`could not load the tickets: ${error.message}`);
    }
  }

  async function start() {
    document.getElementById("store").textContent = store;
    try {
      const me = await fetch("/me", { cache: "no-store", credentials: "same-origin" });
      if (me.ok) csrf = (await me.json()).csrf_token || null;
    } catch (error) {
      // no session token: commands then need the caller's own credentials (an API key)
    }
    await refresh();
    window.setInterval(refresh, refreshSeconds * 1000);
    window.setInterval(tick, 1000);
  }

  start();
})();
