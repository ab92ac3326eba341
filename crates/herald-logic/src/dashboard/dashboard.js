// herald's dashboard: reads dashboard/data once a second, keeps the last five minutes of samples in memory, and
// draws them with uPlot. Counters arrive as totals since the push API started; rates are the difference between
// two samples over the difference of their uptime_ms. A figure the node cannot see arrives as null and shows "n/a".
// Everything is written with textContent: gateway names and errors are never parsed as markup.
"use strict";

(() => {
  const PERIOD_MS = 1000;
  const KEEP = 300;
  const FETCH_TIMEOUT_MS = 5000;
  const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
    "#4b5563", "#65a30d", "#7c3aed", "#0f766e"];

  // Each sample: { t: unix seconds (this browser's clock), data: the document, or null when the fetch failed }.
  const samples = [];
  // What a test or a curious operator can read from the console: the samples and the uPlot instances.
  const herald = { samples, charts: {}, fetches: 0, failures: 0 };
  window.herald = herald;

  const byId = (id) => document.getElementById(id);

  // --- numbers --------------------------------------------------------------------------------------------------

  function count(n) {
    return n == null ? "n/a" : Math.round(n).toLocaleString("en-US");
  }

  function perSecond(n) {
    if (n == null) return "n/a";
    if (n === 0) return "0";
    if (n < 10) return n.toFixed(2);
    return Math.round(n).toLocaleString("en-US");
  }

  function bytes(n) {
    if (n == null) return "n/a";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) {
      n /= 1024;
      unit += 1;
    }
    return (unit === 0 ? Math.round(n) : n.toFixed(1)) + " " + units[unit];
  }

  function duration(ms) {
    let s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${m}m`;
    if (m > 0) return `${m}m ${s}s`;
    return `${s}s`;
  }

  // The rate of the counter `pick` reads, between two samples; null when either lacks it or herald restarted.
  function rate(previous, current, pick) {
    if (!previous || !previous.data || !current || !current.data) return null;
    const before = pick(previous.data);
    const after = pick(current.data);
    const seconds = (current.data.uptime_ms - previous.data.uptime_ms) / 1000;
    if (before == null || after == null || seconds <= 0 || after < before) return null;
    return (after - before) / seconds;
  }

  const sum = (map) => (map == null ? null : Object.values(map).reduce((a, b) => a + b, 0));

  // Sets an element's text, and its data-value to the raw number (what a test compares).
  function show(id, value, format) {
    const element = byId(id);
    element.textContent = format(value);
    element.dataset.value = value == null ? "" : String(value);
  }

  // --- charts ---------------------------------------------------------------------------------------------------

  // A chart's series: each has a label and a function of (previous sample, sample) giving the value to draw.
  const gauge = (label, pick) => ({ label, value: (_, current) => (current && current.data ? pick(current.data) : null) });
  const perSec = (label, pick) => ({ label, value: (previous, current) => rate(previous, current, pick) });

  const field = (name) => (data) => data.total[name];
  const labelled = (group, key) => (data) => (data[group] == null ? null : data[group][key] ?? 0);
  const gatewayField = (name, pick) => (data) => {
    const row = data.gateways.find((g) => g.name === name);
    return row ? pick(row) : null;
  };

  // Every chart: its element, how its values read, and its series for the newest sample (they may change: a new
  // close reason, a gateway heard on NATS), or null when the node cannot see them.
  const CHARTS = [
    {
      id: "connections", format: count, whole: true,
      series: () => [gauge("connections", field("connections")), gauge("rooms", field("rooms")),
        gauge("users", field("users"))],
    },
    {
      id: "pushes", format: perSecond,
      series: () => [perSec("pushes/s", field("pushes")), perSec("items/s", field("items"))],
    },
    {
      id: "frames", format: perSecond,
      series: (data) => (data.total.frames == null ? null
        : [perSec("frames/s", field("frames")), perSec("deliveries/s", field("deliveries"))]),
    },
    {
      id: "bytes", format: bytes,
      series: (data) => (data.total.delivered_bytes == null ? null : [perSec("bytes/s", field("delivered_bytes"))]),
    },
    {
      // Every close, and each reason that has happened (a new one remakes the chart); the table has them all.
      id: "closes", format: perSecond,
      series: (data) => (data.closes == null ? null
        : [perSec("all", (d) => sum(d.closes))].concat(Object.keys(data.closes)
          .filter((reason) => data.closes[reason] > 0)
          .map((reason) => perSec(reason, labelled("closes", reason))))),
    },
    {
      id: "drops", format: perSecond,
      series: (data) => {
        const list = [perSec("pushes refused", field("pushes_refused"))];
        if (data.total.items_unrouted != null) list.push(perSec("items unrouted", field("items_unrouted")));
        if (data.dropped_frames != null) list.push(perSec("frames dropped", (d) => sum(d.dropped_frames)));
        return list;
      },
    },
    {
      id: "gateways", format: count, whole: true,
      series: (data) => (data.gateways.length === 0 ? null
        : data.gateways.map((g) => gauge(g.name, gatewayField(g.name, (row) => row.connections)))),
    },
  ];

  // Tick steps for charts of whole numbers (connections): never a tick between two integers.
  const WHOLE_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6,
    5e6, 1e7, 2e7, 5e7, 1e8];

  function chartWidth(element) {
    return Math.max(280, element.clientWidth - 16);
  }

  // Makes (or remakes, when its series changed) the uPlot of `chart` for `series`.
  function ensureChart(chart, series) {
    const element = byId(`chart-${chart.id}`);
    const labels = series.map((s) => s.label).join("\n");
    if (chart.plot && chart.labels === labels) return;
    if (chart.plot) chart.plot.destroy();
    const options = {
      width: chartWidth(element),
      height: 200,
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{}, Object.assign({ size: 64, values: (_u, ticks) => ticks.map((v) => chart.format(v)) },
        chart.whole ? { incrs: WHOLE_STEPS } : {})],
      series: [{}].concat(series.map((s, i) => ({
        label: s.label,
        stroke: COLORS[i % COLORS.length],
        width: 1.5,
        // The legend shows the value under the cursor; with no cursor there is none (not "n/a").
        value: (_u, v) => (v == null ? "–" : chart.format(v)),
      }))),
      legend: { live: true },
    };
    chart.plot = new uPlot(options, [[], ...series.map(() => [])], element);
    chart.labels = labels;
    herald.charts[chart.id] = chart.plot;
  }

  function drawCharts(latest) {
    for (const chart of CHARTS) {
      const element = byId(`chart-${chart.id}`);
      const series = chart.series(latest);
      if (series == null) {
        element.classList.add("unavailable");
        if (chart.id === "gateways") element.hidden = true;
        if (chart.plot) {
          chart.plot.destroy();
          chart.plot = null;
          delete herald.charts[chart.id];
        }
        continue;
      }
      element.hidden = false;
      element.classList.remove("unavailable");
      ensureChart(chart, series);
      const xs = samples.map((s) => s.t);
      const columns = series.map((s) => samples.map((current, i) => s.value(samples[i - 1], current)));
      chart.plot.setData([xs, ...columns]);
    }
  }

  // --- tables ---------------------------------------------------------------------------------------------------

  function fillTable(id, rows) {
    const body = byId(id).tBodies[0];
    const trs = rows.map((cells) => {
      const tr = document.createElement("tr");
      for (const cell of cells) {
        const td = document.createElement("td");
        if (cell && typeof cell === "object") {
          td.textContent = cell.text;
          if (cell.className) td.className = cell.className;
        } else {
          td.textContent = cell;
        }
        tr.appendChild(td);
      }
      return tr;
    });
    body.replaceChildren(...trs);
  }

  const unavailable = (columns) => [[{ text: "not available on this node", className: "na" }, ...Array(columns - 1).fill("")]];

  function byReasonRows(previous, current, group) {
    const map = current.data[group];
    return Object.keys(map).map((key) => [key, count(map[key]), perSecond(rate(previous, current, labelled(group, key)))]);
  }

  function fillTables(previous, current) {
    const data = current.data;
    fillTable("closes", data.closes == null ? unavailable(3) : byReasonRows(previous, current, "closes"));

    const drops = [
      ["pushes refused", count(data.total.pushes_refused), perSecond(rate(previous, current, field("pushes_refused")))],
      ["items unrouted", count(data.total.items_unrouted), perSecond(rate(previous, current, field("items_unrouted")))],
    ];
    if (data.dropped_frames != null) {
      for (const row of byReasonRows(previous, current, "dropped_frames")) {
        drops.push([`frames dropped: ${row[0]}`, row[1], row[2]]);
      }
    } else {
      drops.push(["frames dropped", "n/a", "n/a"]);
    }
    fillTable("drops", drops);

    const history = data.history;
    if (history == null) {
      fillTable("history", unavailable(3));
    } else {
      const h = (pick) => perSecond(rate(previous, current, (d) => (d.history == null ? null : pick(d.history))));
      const rows = [
        ["items stored", count(history.stored_items), h((x) => x.stored_items)],
        ["bytes retained", bytes(history.bytes), ""],
        ["items replayed", count(history.replayed_items), h((x) => x.replayed_items)],
      ];
      for (const [reason, n] of Object.entries(history.evicted)) {
        rows.push([`evicted: ${reason}`, count(n), h((x) => x.evicted[reason])]);
      }
      for (const [outcome, n] of Object.entries(history.recoveries)) {
        rows.push([`resumed: ${outcome}`, count(n), h((x) => x.recoveries[outcome])]);
      }
      fillTable("history", rows);
    }

    const panel = byId("gateways-panel");
    panel.hidden = data.gateways.length === 0 && data.mode === "hub";
    byId("gateways-summary").hidden = data.mode === "hub";
    byId("gateways-up").textContent = String(data.gateways.filter((g) => g.state === "up").length);
    byId("gateways-total").textContent = String(data.gateways.length);
    fillTable("gateways", data.gateways.map((g) => {
      const hub = (pick) => (d) => {
        const row = d.gateways.find((r) => r.name === g.name);
        return row && row.hub ? pick(row.hub) : null;
      };
      const closes = (d) => {
        const row = d.gateways.find((r) => r.name === g.name);
        return row && row.counts ? sum(row.counts.closes) : null;
      };
      return [
        g.name,
        { text: g.state, className: `state-${g.state}` },
        g.since_secs == null ? (g.last_seen_ms == null ? "" : `seen ${duration(g.last_seen_ms)} ago`) : duration(g.since_secs * 1000),
        count(g.connections),
        count(g.rooms),
        g.hub ? count(g.hub.pushes) : "n/a",
        perSecond(rate(previous, current, hub((x) => x.pushes))),
        perSecond(rate(previous, current, hub((x) => x.frames))),
        g.hub ? bytes(rate(previous, current, hub((x) => x.delivered_bytes))) : "n/a",
        count(closes(data)),
        perSecond(rate(previous, current, closes)),
        g.queue_depth == null ? "n/a" : count(g.queue_depth),
        g.last_error || "",
      ];
    }));
  }

  // --- the loop -------------------------------------------------------------------------------------------------

  function render() {
    const current = samples[samples.length - 1];
    const previous = samples.length > 1 ? samples[samples.length - 2] : null;
    if (!current || !current.data) return;
    const data = current.data;
    const t = data.total;
    byId("mode").textContent = { hub: "serve", cluster: "logic · gRPC", nats: "NATS" }[data.mode] || data.mode;
    byId("uptime").textContent = duration(data.uptime_ms);
    show("total-connections", t.connections, count);
    show("total-rooms", t.rooms, count);
    show("total-users", t.users, count);
    show("total-pushes", t.pushes, count);
    show("total-items", t.items, count);
    show("total-frames", t.frames, count);
    show("total-deliveries", t.deliveries, count);
    show("total-delivered-bytes", t.delivered_bytes, bytes);
    show("total-pushes-refused", t.pushes_refused, count);
    show("total-items-unrouted", t.items_unrouted, count);
    show("total-closes", sum(data.closes), count);
    show("total-dropped", sum(data.dropped_frames), count);
    show("rate-pushes", rate(previous, current, field("pushes")), perSecond);
    show("rate-items", rate(previous, current, field("items")), perSecond);
    show("rate-frames", rate(previous, current, field("frames")), perSecond);
    show("rate-bytes", rate(previous, current, field("delivered_bytes")), bytes);
    show("rate-compression-in", rate(previous, current, field("compression_in_bytes")), bytes);
    show("rate-compression-out", rate(previous, current, field("compression_out_bytes")), bytes);
    show("rate-closes", rate(previous, current, (d) => sum(d.closes)), perSecond);
    fillTables(previous, current);
    drawCharts(data);
  }

  function setStatus(state, text) {
    const status = byId("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  async function sampleOnce() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    let data = null;
    try {
      const response = await fetch("dashboard/data", { cache: "no-store", credentials: "same-origin", signal: abort.signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      data = await response.json();
      herald.fetches += 1;
      setStatus("live", "live");
    } catch (e) {
      herald.failures += 1;
      setStatus("down", `unreachable: ${e.message || e}`);
    } finally {
      clearTimeout(timer);
    }
    // A failed sample is kept as a gap, so the charts do not draw a line across it.
    samples.push({ t: Date.now() / 1000, data });
    while (samples.length > KEEP) samples.shift();
    render();
  }

  async function loop() {
    await sampleOnce();
    setTimeout(loop, PERIOD_MS);
  }

  window.addEventListener("resize", () => {
    for (const chart of CHARTS) {
      if (chart.plot) chart.plot.setSize({ width: chartWidth(byId(`chart-${chart.id}`)), height: 200 });
    }
  });

  if (typeof uPlot === "undefined") {
    setStatus("down", "the chart library did not load");
  } else {
    loop();
  }
})();
