// OrderStream live dashboard: fetches the read API's report endpoints every few seconds and
// draws them as SVG (no library, no CDN). Every drawn mark carries what it shows:
// data-chart (which chart), data-label, data-series and data-value (the raw number), so a test
// can read the DOM for the figures. See docs/dashboard.md.
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const page = new URLSearchParams(window.location.search);
  const refreshSeconds = Math.min(Math.max(Number(page.get("refresh")) || 5, 1), 3600);
  const PALETTE = ["#2f6fde", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#6c8a3a",
                   "#d6336c", "#5c677d", "#00a6d6", "#b5651d"];
  // The built-in channels get colours of their own; any other name is hashed onto the palette.
  const CHANNEL_COLOURS = { webshop: "#2f6fde", wechat: "#17a398", phone: "#8e44ad",
    tmall: "#e4572e", jd: "#d6336c", meituan: "#f3a712", eleme: "#00a6d6",
    woocommerce: "#6c8a3a", square: "#5c677d" };
  const CAPTIONS = { held_orders: "held orders", oldest_wait_minutes: "oldest wait",
    average_risk_score: "average risk score", max_risk_score: "highest risk score",
    orders_received: "orders received", held_for_review: "held for review" };
  // Lifecycle order (events/lifecycle.py), so the funnel reads from intake to the end.
  const STATUSES = ["received", "accepted", "held", "routed", "partially_reserved",
    "reservation_failed", "reserved", "prioritised", "accepted_by_store", "preparing", "ready",
    "picked_up", "shipped", "delivered", "completed", "return_requested", "returned",
    "refunded", "rejected", "cancelled"];

  let catalogue = null; // report name -> [parameter names], from GET /reports

  // ------------------------------------------------------------ small helpers

  function el(tag, attrs, text) {
    const node = tag.startsWith("svg:")
      ? document.createElementNS(SVG, tag.slice(4))
      : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(key, String(value));
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function mark(chart, label, series, value) {
    return { "data-chart": chart, "data-label": label, "data-series": series, "data-value": value };
  }

  function colour(name) {
    if (CHANNEL_COLOURS[name]) return CHANNEL_COLOURS[name];
    let hash = 0;
    for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return PALETTE[hash % PALETTE.length];
  }

  // A time as the API and ClickHouse read it: no zone means UTC.
  function parseTime(text) {
    let value = String(text).trim().replace(" ", "T");
    if (/^\d{4}-\d{2}-\d{2}$/.test(value)) value += "T00:00:00";
    if (!/(Z|[+-]\d{2}:?\d{2})$/.test(value)) value += "Z";
    return Date.parse(value);
  }

  function utcTime(ms, withDate) {
    const iso = new Date(ms).toISOString();
    return withDate ? iso.slice(5, 16).replace("T", " ") : iso.slice(11, 16);
  }

  const formats = {};
  function money(minor, currency) {
    if (!formats[currency]) {
      try {
        formats[currency] = new Intl.NumberFormat(undefined, { style: "currency", currency });
      } catch (_) {
        formats[currency] = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2 });
      }
    }
    const format = formats[currency];
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(minor / 10 ** digits);
  }

  function duration(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  function objects(result) {
    return result.rows.map((row) => Object.fromEntries(result.columns.map((c, i) => [c, row[i]])));
  }

  function replace(id, ...nodes) {
    const holder = document.getElementById(id);
    holder.replaceChildren(...nodes);
    return holder;
  }

  function empty(text) {
    return el("p", { class: "empty" }, text);
  }

  // ------------------------------------------------------------ charts

  // Horizontal bars: items of {label, series, value, text}.
  function barChart(chart, items, options = {}) {
    const { width = 560, labelWidth = 150, textWidth = 90, row = 24 } = options;
    if (!items.length) return empty("Nothing in this window yet.");
    const max = Math.max(...items.map((item) => item.value), 1);
    const plot = width - labelWidth - textWidth;
    const svg = el("svg:svg", { viewBox: `0 0 ${width} ${items.length * row + 4}`,
      role: "img", "aria-label": chart, class: "bars" });
    items.forEach((item, n) => {
      const y = n * row + 2;
      const length = Math.max((item.value / max) * plot, item.value > 0 ? 1 : 0);
      const group = el("svg:g", { class: "row" });
      group.append(
        el("svg:text", { x: labelWidth - 6, y: y + row * 0.65, class: "label",
          "text-anchor": "end" }, item.label),
        el("svg:rect", { x: labelWidth, y: y + 3, width: length.toFixed(1), height: row - 6,
          fill: item.fill || colour(item.series || item.label),
          ...mark(chart, item.label, item.series, item.value) }),
        el("svg:text", { x: labelWidth + length + 6, y: y + row * 0.65, class: "value" },
          item.text),
      );
      group.querySelector("rect").append(el("svg:title", {}, `${item.label}: ${item.text}`));
      svg.append(group);
    });
    return svg;
  }

  // Grouped horizontal bars: one group per label, one bar per series.
  function groupedBars(chart, groups, series, format, { width = 560, labelWidth = 150 } = {}) {
    if (!groups.length) return empty("No stage completed in this window yet.");
    const bar = 11;
    const gap = 8;
    const height = groups.length * (series.length * bar + gap);
    const max = Math.max(...groups.flatMap((g) => series.map((s) => g.values[s] || 0)), 1);
    const plot = width - labelWidth - 80;
    const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height + 20}`, role: "img",
      "aria-label": chart, class: "bars" });
    groups.forEach((group, n) => {
      const top = n * (series.length * bar + gap) + 2;
      svg.append(el("svg:text", { x: labelWidth - 6, y: top + bar + 3, class: "label",
        "text-anchor": "end" }, group.label));
      series.forEach((name, k) => {
        const value = group.values[name] || 0;
        const length = Math.max((value / max) * plot, value > 0 ? 1 : 0);
        const y = top + k * bar;
        const rect = el("svg:rect", { x: labelWidth, y, width: length.toFixed(1),
          height: bar - 2, fill: k === 0 ? "#2f6fde" : "#9bb8ef",
          ...mark(chart, group.label, name, value) });
        rect.append(el("svg:title", {}, `${group.label} ${name}: ${format(value)}`));
        svg.append(rect,
          el("svg:text", { x: labelWidth + length + 5, y: y + bar - 3, class: "value small" },
            `${name} ${format(value)}`));
      });
    });
    const legendY = height + 14;
    series.forEach((name, k) => {
      svg.append(
        el("svg:rect", { x: labelWidth + k * 70, y: legendY - 9, width: 10, height: 10,
          fill: k === 0 ? "#2f6fde" : "#9bb8ef" }),
        el("svg:text", { x: labelWidth + k * 70 + 14, y: legendY, class: "small" }, name),
      );
    });
    return svg;
  }

  // Stacked columns over time: one column per bucket, one segment per series.
  function stackedColumns(chart, buckets, { width = 960, height = 220,
    emptyText = "No orders received in this window." } = {}) {
    const left = 40;
    const bottom = 22;
    const plotW = width - left - 10;
    const plotH = height - bottom - 10;
    const totals = buckets.map((b) => Object.values(b.counts).reduce((a, c) => a + c, 0));
    const max = Math.max(...totals, 1);
    const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": chart, class: "columns" });
    svg.append(
      el("svg:line", { x1: left, y1: 10, x2: left, y2: 10 + plotH, class: "axis" }),
      el("svg:line", { x1: left, y1: 10 + plotH, x2: left + plotW, y2: 10 + plotH,
        class: "axis" }),
      el("svg:text", { x: left - 4, y: 16, class: "small", "text-anchor": "end" }, max),
      el("svg:text", { x: left - 4, y: 10 + plotH, class: "small", "text-anchor": "end" }, 0),
    );
    const step = plotW / buckets.length;
    const multiDay = buckets.length > 1
      && buckets[buckets.length - 1].start - buckets[0].start >= 86400000;
    buckets.forEach((bucket, n) => {
      let y = 10 + plotH;
      const x = left + n * step + step * 0.1;
      for (const [series, value] of Object.entries(bucket.counts).sort()) {
        if (!value) continue;
        const h = (value / max) * plotH;
        y -= h;
        const rect = el("svg:rect", { x: x.toFixed(1), y: y.toFixed(1),
          width: Math.max(step * 0.8, 1).toFixed(1), height: h.toFixed(1), fill: colour(series),
          ...mark(chart, new Date(bucket.start).toISOString().replace(".000Z", "Z"), series,
            value) });
        rect.append(el("svg:title", {},
          `${utcTime(bucket.start, multiDay)} UTC ${series}: ${value}`));
        svg.append(rect);
      }
      const last = buckets.length - 1;
      if (n === 0 || n === last || n === Math.floor(last / 2)) {
        const anchor = n === 0 ? "start" : n === last ? "end" : "middle";
        const at = left + step * (n === 0 ? 0 : n === last ? n + 1 : n + 0.5);
        svg.append(el("svg:text", { x: at.toFixed(1), y: height - 6, class: "small",
          "text-anchor": anchor }, utcTime(bucket.start, multiDay)));
      }
    });
    if (!totals.some((t) => t > 0)) {
      svg.append(el("svg:text", { x: left + plotW / 2, y: 10 + plotH / 2, class: "empty",
        "text-anchor": "middle" }, emptyText));
    }
    return svg;
  }

  function table(chart, columns, rows) {
    if (!rows.length) return empty("None.");
    const head = el("tr");
    for (const column of columns) head.append(el("th", {}, column.title));
    const body = el("tbody");
    for (const row of rows) {
      const tr = el("tr", mark(chart, row.label, row.series, row.value));
      for (const [key, value] of Object.entries(row.data || {})) {
        tr.setAttribute(`data-${key.replace(/_/g, "-")}`, value);
      }
      for (const column of columns) tr.append(el("td", { class: column.numeric ? "num" : "" },
        column.show(row.item)));
      body.append(tr);
    }
    const thead = el("thead");
    thead.append(head);
    const node = el("table", { class: "rows" });
    node.append(thead, body);
    return node;
  }

  function tile(chart, label, value, text, caption) {
    const node = el("div", { class: "tile", ...mark(chart, label, undefined, value) });
    node.append(el("span", { class: "figure" }, text), el("span", { class: "caption" },
      caption || CAPTIONS[label] || label.replace(/_/g, " ")));
    return node;
  }

  // ------------------------------------------------------------ panels

  // The orders-per-minute axis: the page's window, else the report's default (the last hour).
  function windowBounds() {
    const until = page.get("until") ? parseTime(page.get("until")) : Date.now();
    const since = page.get("since")
      ? Math.floor(parseTime(page.get("since")) / 60000) * 60000
      : Math.floor(until / 60000) * 60000 - 59 * 60000;
    return { since, until };
  }

  function drawOrdersPerMinute(result) {
    const rows = objects(result);
    const { since, until } = windowBounds();
    const minutes = Math.max(Math.ceil((until - since) / 60000), 1);
    const size = Math.max(Math.ceil(minutes / 60), 1); // at most 60 columns
    const count = Math.max(Math.ceil(minutes / size), 1);
    const buckets = Array.from({ length: count }, (_, n) => ({ start: since + n * size * 60000,
      counts: {} }));
    const byChannel = {};
    for (const row of rows) {
      const n = Math.min(Math.max(Math.floor((parseTime(row.minute) - since) / (size * 60000)),
        0), count - 1);
      buckets[n].counts[row.channel] = (buckets[n].counts[row.channel] || 0) + row.received;
      byChannel[row.channel] = (byChannel[row.channel] || 0) + row.received;
    }
    document.getElementById("orders-per-minute-note").textContent =
      `Orders received, ${size === 1 ? "per minute" : `per ${size} minutes`}, ` +
      `${utcTime(since, true)} – ${utcTime(until, true)} UTC`;
    replace("orders-per-minute", stackedColumns("orders-per-minute", buckets));
    const legend = Object.entries(byChannel).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    replace("orders-by-channel", ...legend.map(([channel, total]) => {
      const item = el("li", mark("orders-by-channel", channel, channel, total));
      item.append(el("span", { class: "swatch", style: `background:${colour(channel)}` }),
        `${channel} `, el("strong", {}, total));
      return item;
    }));
    const all = Object.values(byChannel).reduce((a, c) => a + c, 0);
    return { orders_received: all };
  }

  function drawRevenue(result) {
    const rows = objects(result);
    replace("revenue", barChart("revenue", rows.map((r) => ({
      label: `${r.channel} · ${r.currency}`, series: r.currency, value: r.revenue,
      fill: colour(r.channel), text: `${money(r.revenue, r.currency)} · ${r.orders} orders`,
    })), { labelWidth: 130, textWidth: 190 }));
    const byCurrency = {};
    for (const r of rows) byCurrency[r.currency] = (byCurrency[r.currency] || 0) + r.revenue;
    return { revenue: byCurrency };
  }

  function drawFunnel(result) {
    const rows = objects(result);
    const rank = (s) => (STATUSES.indexOf(s) === -1 ? STATUSES.length : STATUSES.indexOf(s));
    rows.sort((a, b) => rank(a.status) - rank(b.status) || (a.status < b.status ? -1 : 1));
    replace("funnel", barChart("funnel", rows.map((r) => ({
      label: r.status, series: "orders", value: r.orders, text: String(r.orders),
      fill: ["rejected", "cancelled"].includes(r.status) ? "#c0392b" : "#17a398",
    }))));
    return {};
  }

  function drawStageTimes(result) {
    const groups = objects(result).map((r) => ({ label: r.stage,
      values: { p50: r.p50_seconds, p90: r.p90_seconds } }));
    replace("stage-times", groupedBars("stage-times", groups, ["p50", "p90"], duration));
    return {};
  }

  function drawReviewQueue(queue, held) {
    const q = objects(queue)[0] || { held_orders: 0, oldest_wait_minutes: 0,
      average_risk_score: 0, max_risk_score: 0 };
    replace("review-queue",
      tile("review-queue", "held_orders", q.held_orders, q.held_orders),
      tile("review-queue", "oldest_wait_minutes", q.oldest_wait_minutes,
        duration(q.oldest_wait_minutes * 60)),
      tile("review-queue", "average_risk_score", q.average_risk_score, q.average_risk_score),
      tile("review-queue", "max_risk_score", q.max_risk_score, q.max_risk_score));
    const rows = objects(held).map((r) => ({ label: r.order_id, series: r.channel,
      value: r.risk_score, item: r, data: { held_at: r.held_at } }));
    replace("held-orders", table("held-orders", [
      { title: "order", show: (r) => r.external_id || r.order_id },
      { title: "channel", show: (r) => r.channel },
      { title: "risk", show: (r) => r.risk_score, numeric: true },
      { title: "held since (UTC)", show: (r) => (r.held_at || "").replace("T", " ").slice(0, 16) },
      { title: "total", show: (r) => money(r.total, r.currency), numeric: true },
    ], rows));
    return { held_for_review: q.held_orders };
  }

  function drawStockAlerts(result) {
    const rows = objects(result).map((r) => ({ label: `${r.sku}@${r.location}`,
      series: r.location, value: r.available, item: r,
      data: { alerted_at: r.alerted_at, reorder_quantity: r.reorder_quantity,
        alerts: r.alerts } }));
    // One row per sku@location (its newest alert), with how often it was raised in the window.
    replace("stock-alerts", table("stock-alerts", [
      { title: "sku", show: (r) => r.sku },
      { title: "location", show: (r) => r.location },
      { title: "alerted (UTC)", show: (r) => r.alerted_at.replace("T", " ").slice(0, 16) },
      { title: "available", show: (r) => r.available, numeric: true },
      { title: "reorder", show: (r) => r.reorder_quantity, numeric: true },
      { title: "times", show: (r) => r.alerts, numeric: true },
    ], rows));
    return {};
  }

  function drawAtRisk(result) {
    const rows = objects(result).map((r) => ({ label: r.order_id, series: r.location,
      value: 1, item: r, data: { risk: r.risk, due_at: r.due_at } }));
    replace("orders-at-risk", table("orders-at-risk", [
      { title: "order", show: (r) => r.order_id },
      { title: "store", show: (r) => r.location },
      { title: "channel", show: (r) => r.channel },
      { title: "risk", show: (r) => r.risk },
      { title: "due (UTC)", show: (r) => r.due_at.replace("T", " ").slice(0, 16) },
    ], rows));
    return { at_risk: rows.length };
  }

  function drawWebhooks(result) {
    const rows = result.subscriptions.map((s) => ({ label: s.id, series: s.host,
      value: s.lag, item: s, data: { enabled: String(s.enabled) } }));
    replace("webhooks", rows.length ? table("webhooks", [
      { title: "subscription", show: (s) => s.id },
      { title: "posts to", show: (s) => s.host },
      { title: "events", show: (s) => (s.event_types.length ? s.event_types.join(", ") : "all") },
      { title: "state", show: (s) => (s.enabled ? "on" : `off: ${s.disabled_reason || ""}`) },
      { title: "lag (events)", show: (s) => s.lag, numeric: true },
    ], rows) : empty("No subscriptions (oms subscriptions add URL)."));
    return { webhook_lag: rows.reduce((most, r) => Math.max(most, r.value), 0) };
  }

  function percent(fraction) {
    return `${(fraction * 100).toFixed(1)} %`;
  }

  function drawNetSales(result) {
    const rows = objects(result);
    replace("net-sales", barChart("net-sales", rows.map((r) => ({
      label: `${r.channel} · ${r.currency}`, series: r.currency, value: r.net_sales,
      fill: colour(r.channel),
      text: `${money(r.net_sales, r.currency)} · refunds ${money(r.refunds, r.currency)}`,
    })), { labelWidth: 130, textWidth: 230 }));
    return {};
  }

  function drawOnTime(result) {
    const rows = objects(result);
    replace("carrier-on-time", barChart("carrier-on-time", rows.map((r) => ({
      label: r.carrier, series: "on_time_rate", value: r.on_time_rate, fill: "#17a398",
      text: `${percent(r.on_time_rate)} · ${r.on_time}/${r.on_time + r.late} · ` +
        `${r.on_the_way} on the way`,
    })), { labelWidth: 110, textWidth: 230 }));
    return {};
  }

  function drawReturns(rates, reasons) {
    const skus = objects(rates).map((r) => ({ label: r.sku, series: "return_rate",
      value: r.return_rate, item: r,
      data: { units_sold: r.units_sold, units_returned: r.units_returned } }));
    replace("return-rate", table("return-rate", [
      { title: "sku", show: (r) => r.sku },
      { title: "sold", show: (r) => r.units_sold, numeric: true },
      { title: "returned", show: (r) => r.units_returned, numeric: true },
      { title: "rate", show: (r) => percent(r.return_rate), numeric: true },
    ], skus));
    const why = objects(reasons).map((r) => ({ label: r.reason, series: "units",
      value: r.units, item: r, data: { returns: r.returns } }));
    replace("return-reasons", table("return-reasons", [
      { title: "reason", show: (r) => r.reason },
      { title: "returns", show: (r) => r.returns, numeric: true },
      { title: "units", show: (r) => r.units, numeric: true },
    ], why));
    return {};
  }

  function drawShippingCost(result) {
    const rows = objects(result).map((r) => ({ label: `${r.carrier} · ${r.currency}`,
      series: r.currency, value: r.total_cost, item: r,
      data: { cost_per_order: r.cost_per_order, shipments: r.shipments } }));
    replace("shipping-cost", table("shipping-cost", [
      { title: "carrier", show: (r) => r.carrier },
      { title: "shipments", show: (r) => r.shipments, numeric: true },
      { title: "orders", show: (r) => r.orders, numeric: true },
      { title: "cost", show: (r) => money(r.total_cost, r.currency), numeric: true },
      { title: "per order", show: (r) => money(r.cost_per_order, r.currency), numeric: true },
    ], rows));
    return {};
  }

  // Operations: not a report's window but now — Kafka's ends and offsets (GET /pipeline) and
  // the read models' last hour (order_events_per_minute).
  const FLOWS = { intake: "intake", orders: "order log", read_models: "into the read models",
    dead_letters: "dead letters", rejected: "orders rejected" };

  function perMinute(chart, minutes, name, values) {
    const buckets = minutes.map((minute, n) => ({ start: parseTime(minute),
      counts: { [name]: values[n] || 0 } }));
    const holder = el("div", { class: "flow" });
    holder.append(el("p", { class: "note" },
      `${FLOWS[name]}: ${values.reduce((a, c) => a + c, 0)} in the hour`),
      stackedColumns(chart, buckets, { height: 120, emptyText: "None in the last hour." }));
    return holder;
  }

  function drawOperations(pipeline, activity) {
    const rows = pipeline.lag.map((r) => ({ label: `${r.consumer} · ${r.topic}`,
      series: r.consumer, value: r.lag, item: r }));
    replace("consumer-lag", table("consumer-lag", [
      { title: "consumer", show: (r) => r.consumer },
      { title: "topic", show: (r) => r.topic },
      { title: "lag (messages)", show: (r) => r.lag, numeric: true },
      { title: "per partition", show: (r) => Object.entries(r.partitions)
        .map(([p, n]) => `${p}: ${n}`).join(" · ") },
    ], rows));
    const minutes = pipeline.minutes;
    const projected = Object.fromEntries(minutes.map((m) => [m, 0]));
    const rejected = Object.fromEntries(minutes.map((m) => [m, 0]));
    for (const row of objects(activity)) {
      const minute = new Date(parseTime(row.minute)).toISOString().replace(".000Z", "Z");
      if (minute in projected) {
        projected[minute] += row.order_events;
        rejected[minute] += row.rejected;
      }
    }
    replace("throughput",
      perMinute("throughput", minutes, "intake", pipeline.per_minute.intake),
      perMinute("throughput", minutes, "orders", pipeline.per_minute.orders),
      perMinute("throughput", minutes, "read_models", minutes.map((m) => projected[m])));
    replace("errors",
      perMinute("errors", minutes, "dead_letters", pipeline.per_minute.dead_letters),
      perMinute("errors", minutes, "rejected", minutes.map((m) => rejected[m])));
    return { lag: rows.reduce((most, r) => Math.max(most, r.value), 0) };
  }

  function drawKpis(figures) {
    const tiles = [];
    if ("orders_received" in figures) {
      tiles.push(tile("kpi", "orders_received", figures.orders_received,
        figures.orders_received, `orders received${page.get("since") ? "" : " · last hour"}`));
    }
    for (const [currency, minor] of Object.entries(figures.revenue || {}).sort()) {
      const node = tile("kpi", `revenue_${currency}`, minor, money(minor, currency),
        `revenue ${currency}${page.get("since") ? "" : " · 30 days"}`);
      node.setAttribute("data-series", currency);
      tiles.push(node);
    }
    if ("at_risk" in figures) {
      tiles.push(tile("kpi", "at_risk", figures.at_risk, figures.at_risk, "orders at risk"));
    }
    if ("held_for_review" in figures) {
      tiles.push(tile("kpi", "held_for_review", figures.held_for_review,
        figures.held_for_review));
    }
    replace("kpis", ...tiles);
  }

  // ------------------------------------------------------------ fetching

  const PANELS = [
    { id: "orders-per-minute", reports: ["orders_per_minute"], draw: drawOrdersPerMinute },
    { id: "revenue", reports: ["sales_by_channel"], draw: drawRevenue },
    { id: "funnel", reports: ["orders_by_status"], draw: drawFunnel },
    { id: "stage-times", reports: ["stage_cycle_times"], draw: drawStageTimes },
    { id: "review-queue", reports: ["review_queue", "held_orders"], draw: drawReviewQueue,
      limits: { held_orders: 10 } },
    { id: "stock-alerts", reports: ["stock_alerts"], draw: drawStockAlerts,
      limits: { stock_alerts: 20 } },
    { id: "orders-at-risk", reports: ["orders_at_risk"], draw: drawAtRisk,
      limits: { orders_at_risk: 20 } },
    { id: "net-sales", reports: ["sales_net_of_refunds"], draw: drawNetSales },
    { id: "carrier-on-time", reports: ["carrier_on_time"], draw: drawOnTime },
    { id: "return-rate", reports: ["return_rate_by_sku", "returns_by_reason"],
      draw: drawReturns, limits: { return_rate_by_sku: 10 } },
    { id: "shipping-cost", reports: ["shipping_cost_by_carrier"], draw: drawShippingCost },
    // Not a report: read from Kafka by the API (oms/api.py), not from ClickHouse.
    { id: "webhooks", urls: ["/subscriptions"], draw: drawWebhooks },
    // Kafka's offsets and the projector's ledger (projections/pipeline_status.py), with the
    // read models' last hour: always now, whatever the page's window.
    { id: "consumer-lag", urls: ["/pipeline", "/reports/order_events_per_minute"],
      draw: drawOperations },
  ];

  async function getJson(url) {
    const response = await fetch(url, { cache: "no-store" });
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(body.error || `${url}: HTTP ${response.status}`);
    return body;
  }

  // The page's window (?since=&until=) goes to every report that takes it; as_of follows until.
  function reportUrl(name, limits) {
    const takes = catalogue[name] || [];
    const query = new URLSearchParams();
    for (const key of ["since", "until", "as_of"]) {
      const value = page.get(key) || (key === "as_of" ? page.get("until") : null);
      if (value && takes.includes(key)) query.set(key, value);
    }
    if (limits && limits[name] && takes.includes("limit")) query.set("limit", limits[name]);
    const text = query.toString();
    return `/reports/${name}${text ? `?${text}` : ""}`;
  }

  function showError(panelId, message) {
    const holder = document.getElementById(panelId).closest(".panel");
    let note = holder.querySelector(".error");
    if (!message) {
      if (note) note.remove();
      return;
    }
    if (!note) {
      note = el("p", { class: "error", "data-error": panelId });
      holder.querySelector("h2").after(note);
    }
    note.textContent = message;
  }

  async function refresh() {
    const status = document.getElementById("status");
    const errors = [];
    try {
      if (!catalogue) {
        const listing = await getJson("/reports");
        catalogue = Object.fromEntries(listing.reports.map((r) => [r.name,
          r.parameters.map((p) => p.name)]));
      }
      const figures = {};
      await Promise.all(PANELS.map(async (panel) => {
        try {
          const urls = panel.urls || panel.reports.map((name) => reportUrl(name, panel.limits));
          const results = await Promise.all(urls.map((url) => getJson(url)));
          Object.assign(figures, panel.draw(...results));
          showError(panel.id, null);
        } catch (exc) {
          errors.push(exc.message);
          showError(panel.id, exc.message);
        }
      }));
      drawKpis(figures);
    } catch (exc) {
      errors.push(exc.message);
    }
    const body = document.body;
    body.dataset.refreshes = String(Number(body.dataset.refreshes || 0) + 1);
    body.dataset.updatedAt = new Date().toISOString();
    body.dataset.errors = String(errors.length);
    status.textContent = errors.length
      ? `${errors[0]} — retrying every ${refreshSeconds} s`
      : `updated ${new Date().toLocaleTimeString()} · refreshes every ${refreshSeconds} s`;
    status.className = errors.length ? "error" : "";
    window.setTimeout(refresh, refreshSeconds * 1000);
  }

  function describeWindow() {
    const since = page.get("since");
    const until = page.get("until");
    document.getElementById("window").textContent = since || until
      ? `Window: ${since || "each report's default start"} – ${until || "now"} (UTC)`
      : "Rolling windows: orders per minute over the last hour; sales, funnel and stage times " +
        "over 30 days; stock alerts over 7 days; the review queue as it stands; the retail " +
        "books over 30 days; operations over the last hour.";
  }

  describeWindow();
  refresh();
})();
