// The dashboard page: the latest sample of metrics:system in numbers, the last minute in
// sparklines. rtserve.yaml keeps 60 samples of history, so a new page starts with a past.
// ?host=NAME shows one machine's samples only, when several publish to the channel: the
// server filters them by their `host` tag (a tag filter), so the others never reach the page.
"use strict";

const CHANNEL = "metrics:system";
const KEEP = 60; // samples in a sparkline
const samples = []; // oldest first
const $ = (id) => document.getElementById(id);

function show() {
  const latest = samples[samples.length - 1];
  if (!latest) return;
  for (const card of document.querySelectorAll("[data-field]")) {
    const field = card.dataset.field;
    const value = latest[field];
    card.querySelector("output").textContent =
      value === null || value === undefined ? "n/a" : `${value}${card.dataset.unit || ""}`;
    const canvas = card.querySelector("canvas");
    if (canvas) sparkline(canvas, samples.map((s) => s[field]), Number(card.dataset.max) || null);
  }
  $("updated").textContent = `updated ${new Date(latest.time * 1000).toLocaleTimeString()}`;
}

function sparkline(canvas, values, max) {
  const width = (canvas.width = canvas.clientWidth * devicePixelRatio);
  const height = (canvas.height = canvas.clientHeight * devicePixelRatio);
  const ctx = canvas.getContext("2d");
  const known = values.filter((v) => typeof v === "number");
  if (known.length < 2) return;
  const top = max || Math.max(...known) * 1.1 || 1;
  ctx.beginPath();
  values.forEach((v, i) => {
    if (typeof v !== "number") return;
    const x = ((i + KEEP - values.length) / (KEEP - 1)) * width; // the newest at the right
    const y = height - (v / top) * (height - 2) - 1;
    ctx.lineTo(x, y);
  });
  ctx.lineWidth = 1.5 * devicePixelRatio;
  ctx.strokeStyle = "#2d6cdf";
  ctx.stroke();
}

function add(sample) {
  const last = samples[samples.length - 1];
  if (last && sample.time <= last.time) return; // seen already
  samples.push(sample);
  if (samples.length > KEEP) samples.splice(0, samples.length - KEEP);
}

const rt = new Rtserve(); // rtserve.js, served by rtserve at /rtserve.js
rt.on("state", (state) => {
  $("status").dataset.state = state === "connected" ? "on" : state === "closed" ? "off" : "wait";
  $("status").textContent = state === "connected" ? "live" : state;
});

const host = new URLSearchParams(location.search).get("host");
rt.subscribe(CHANNEL, {
  filter: host ? { eq: ["host", host] } : undefined,
  delta: "fossil", // samples as deltas from the previous one, when smaller (see the README)
  onPublication(pub) {
    add(pub.data);
    show();
  },
  async onSubscribed(result) {
    if (result.recovered) return; // the missed samples came as onPub
    // First time, or after a gap: take the last minute from the history.
    try {
      const history = await rt.history(CHANNEL, { limit: KEEP });
      samples.length = 0;
      for (const pub of history.publications) add(pub.data);
      show();
    } catch (error) {
      console.warn("history:", error.message); // the live samples keep coming
    }
  },
});

rt.connect();
addEventListener("resize", show);
