// The live dashboard page: one subscription to the channel `metrics`, a card per machine
// (collector.py samples) and a row per server process ("kind": "server" samples).
//
// rtserve.js picks the transport (WebSocket, else Server-Sent Events, else long polling) and
// resumes from the last offset after a drop; ?transport=sse or ?transport=poll forces one.
// A new page fills its charts from the channel's history; later, offsets that jump are
// samples the server conflated away because this page was slow: the newest one per host
// always arrives. ?host=NAME shows that machine's card only (and the server rows): the page
// subscribes with a tag filter, and the server sends it nothing of the other machines (then
// offsets jump over their samples, which is no conflation).
"use strict";

const CHANNEL = "metrics";
const KEEP = 120; // points per chart (the channel keeps 120 publications)
const hosts = new Map(); // host -> {card, points: [{time, cpu}], last}
const servers = new Map(); // host -> {row, last}
const counts = { received: 0, skipped: 0 };
const $ = (id) => document.getElementById(id);

function fmtBytes(n) {
  if (typeof n !== "number") return "n/a";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) (n /= 1024), i++;
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
const fmt = (v, unit = "") => (typeof v === "number" ? `${v}${unit}` : "n/a");

function hostCard(name) {
  let entry = hosts.get(name);
  if (entry) return entry;
  const card = document.createElement("section");
  card.className = "host";
  card.innerHTML =
    "<h3><span></span><small></small></h3><canvas></canvas><div class=bars></div>" +
    "<dl><dt>CPU</dt><dd data-f=cpu></dd><dt>load</dt><dd data-f=load></dd>" +
    "<dt>memory</dt><dd data-f=mem></dd><dt>network</dt><dd data-f=net></dd>" +
    "<dt>loopback</dt><dd data-f=lo></dd></dl>";
  card.querySelector("h3 span").textContent = name;
  entry = { card, points: [], last: null };
  hosts.set(name, entry);
  $("no-hosts")?.remove();
  $("hosts").append(card);
  return entry;
}

function showHost(entry) {
  const s = entry.last;
  const field = (f) => entry.card.querySelector(`[data-f=${f}]`);
  field("cpu").textContent = fmt(s.cpu_percent, " %");
  field("load").textContent = [s.load1, s.load5, s.load15].map((v) => fmt(v)).join(" / ");
  field("mem").textContent =
    `${fmt(s.mem_used_percent, " %")} of ${fmtBytes(s.mem_total)}`;
  field("net").textContent =
    `↓ ${fmtBytes(s.net_rx_bytes_per_s)}/s ↑ ${fmtBytes(s.net_tx_bytes_per_s)}/s`;
  field("lo").textContent = `${fmtBytes(s.lo_bytes_per_s)}/s`;
  const bars = entry.card.querySelector(".bars");
  const cpus = s.cpus || [];
  while (bars.children.length > cpus.length) bars.lastChild.remove();
  while (bars.children.length < cpus.length) bars.append(document.createElement("span"));
  cpus.forEach((p, i) => {
    bars.children[i].style.setProperty("--p", `${p || 0}%`);
    bars.children[i].title = `cpu${i}: ${fmt(p, " %")}`;
  });
  chart(entry.card.querySelector("canvas"), entry.points);
}

function chart(canvas, points) {
  const width = (canvas.width = canvas.clientWidth * devicePixelRatio);
  const height = (canvas.height = canvas.clientHeight * devicePixelRatio);
  const ctx = canvas.getContext("2d");
  const known = points.filter((p) => typeof p.cpu === "number");
  if (known.length < 2) return;
  const t0 = known[0].time;
  const span = Math.max(known[known.length - 1].time - t0, 1);
  ctx.beginPath();
  for (const p of known) ctx.lineTo(((p.time - t0) / span) * width, height * (1 - p.cpu / 100));
  ctx.lineWidth = 1.5 * devicePixelRatio;
  ctx.strokeStyle = "#2d6cdf";
  ctx.stroke();
}

function showServer(s) {
  let entry = servers.get(s.host);
  if (!entry) {
    const row = document.createElement("tr");
    row.innerHTML = "<td></td><td></td><td></td><td></td><td></td>";
    row.cells[0].textContent = s.host;
    entry = { row };
    servers.set(s.host, entry);
    $("servers").append(row);
  }
  entry.last = s;
  const cells = entry.row.cells;
  cells[1].textContent = fmt(s.viewers);
  cells[2].textContent = fmt(s.deliveries_per_s);
  cells[3].textContent = fmt(s.conflated);
}

// One sample, from a live publication or from the history (which may answer after the first
// live ones): a chart keeps its points in time order, a card shows the newest sample.
function apply(sample) {
  if (!sample || typeof sample.host !== "string") return;
  if (sample.kind === "server") {
    const known = servers.get(sample.host);
    if (!known || sample.time > known.last.time) showServer(sample);
    return;
  }
  const entry = hostCard(sample.host);
  if (entry.points.some((p) => p.time === sample.time)) return; // seen already
  entry.points.push({ time: sample.time, cpu: sample.cpu_percent });
  entry.points.sort((a, b) => a.time - b.time);
  if (entry.points.length > KEEP) entry.points.splice(0, entry.points.length - KEEP);
  if (!entry.last || sample.time > entry.last.time) entry.last = sample;
  showHost(entry);
}

// Every second: how old each card's latest sample is (a stopped collector shows here).
setInterval(() => {
  const now = Date.now() / 1000;
  for (const entry of hosts.values()) {
    entry.card.querySelector("h3 small").textContent = `${(now - entry.last.time).toFixed(1)} s ago`;
  }
  for (const entry of servers.values()) {
    entry.row.cells[4].textContent = `${(now - entry.last.time).toFixed(1)} s ago`;
  }
}, 1000);

const params = new URLSearchParams(location.search);
const forced = params.get("transport");
const onlyHost = params.get("host");
// Collectors tag samples {kind: "machine", host}; the server's own figures {kind: "server"}.
const filter = onlyHost
  ? { or: [{ eq: ["host", onlyHost] }, { eq: ["kind", "server"] }] }
  : undefined;
const rt = new Rtserve(forced ? { transports: [forced] } : {});
rt.on("state", (state, info) => {
  const status = $("status");
  status.className = state === "connected" ? "on" : state === "closed" ? "off" : "";
  status.textContent = state === "connected" ? "live" : state;
  if (info.transport) $("transport").textContent = info.transport;
});

let lastOffset = null;
// Subscribe (again, from `since`, after a refusal). rtserve.js resubscribes by itself after a
// dropped connection; a subscribe the server refused (115: the broker could not answer, in a
// reconnect storm say) ends the subscription instead, so the page asks again a bit later.
function follow(since) {
  const sub = rt.subscribe(CHANNEL, {
    since,
    filter,
    delta: "fossil", // each sample as a delta from the one before, when that is smaller
    onPublication(pub) {
      if (!filter && lastOffset !== null && pub.offset > lastOffset + 1) {
        counts.skipped += pub.offset - lastOffset - 1; // conflated while this page was slow
      }
      lastOffset = pub.offset;
      counts.received += 1;
      $("received").textContent = counts.received;
      $("skipped").textContent = counts.skipped;
      apply(pub.data);
    },
    async onSubscribed(result) {
      // A resumed subscription that missed nothing: the gap came as publications.
      if (result.recovered && lastOffset !== null) return;
      lastOffset = result.offset;
      // A new page (or one that lost track): fill the charts from the channel's history.
      try {
        const history = await rt.history(CHANNEL, { limit: KEEP });
        for (const pub of history.publications) apply(pub.data);
      } catch (error) {
        console.warn("history:", error.message); // the live samples keep coming
      }
    },
    onError(error) {
      console.warn(`subscription ended (${error.code}): ${error.message}; again soon`);
      setTimeout(() => follow(sub.position || undefined), 1000 + Math.random() * 2000);
    },
  });
}
follow();
rt.connect();
addEventListener("resize", () => hosts.forEach(showHost));
