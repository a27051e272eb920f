// voxgate usage page: GET /v1/usage per day (docs/platform.md#usage), a bar chart drawn as inline SVG (no
// library: the page works where nothing outside this server is reachable) and the numbers as a table.

import { api, el, initApiKeyBox, svg } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const COLUMNS = ["sessions", "audio_in_s", "audio_out_s", "stt_s", "llm_tokens", "tts_chars", "jobs"];
const WIDTH = 960;
const HEIGHT = 260;
const PAD = { left: 56, right: 12, top: 12, bottom: 36 };

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function metricOf(day, metric) {
  if (metric === "audio_min") return (day.audio_in_s + day.audio_out_s) / 60;
  return day[metric];
}

function formatValue(value) {
  if (!Number.isFinite(value)) return "0";
  if (Number.isInteger(value)) return String(value);
  return value.toFixed(value < 10 ? 2 : 1);
}

function drawChart(days, metric) {
  const values = days.map((d) => metricOf(d, metric));
  const max = Math.max(1e-9, ...values);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const slot = plotW / Math.max(1, days.length);
  const bars = days.map((day, i) => {
    const h = (values[i] / max) * plotH;
    const bar = svg("rect", {
      class: "bar",
      x: PAD.left + i * slot + slot * 0.15,
      y: PAD.top + plotH - h,
      width: Math.max(1, slot * 0.7),
      height: h,
    });
    bar.appendChild(svg("title", {}, `${day.day}: ${formatValue(values[i])}`));
    return bar;
  });
  const every = Math.max(1, Math.ceil(days.length / 10));
  const labels = days
    .map((day, i) => (i % every === 0 ? svg("text", { x: PAD.left + i * slot + slot / 2, y: HEIGHT - 12, "text-anchor": "middle" }, day.day.slice(5)) : null))
    .filter(Boolean);
  const ticks = [0, 0.5, 1].map((f) =>
    svg("text", { x: PAD.left - 6, y: PAD.top + plotH - f * plotH + 4, "text-anchor": "end" }, formatValue(f * max)),
  );
  const axis = svg("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: PAD.top + plotH, y2: PAD.top + plotH });
  return svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img" }, axis, ...bars, ...labels, ...ticks);
}

function drawTable(days) {
  return days.map((day) => el("tr", {}, el("td", {}, day.day), ...COLUMNS.map((c) => el("td", {}, formatValue(day[c])))));
}

async function load() {
  const params = new URLSearchParams();
  if ($("usage-from").value) params.set("from", $("usage-from").value);
  if ($("usage-to").value) params.set("to", $("usage-to").value);
  if ($("usage-key").value.trim()) params.set("key", $("usage-key").value.trim());
  $("usage-status").textContent = "Loading…";
  const result = await api(`/v1/usage?${params}`);
  if (!result.ok) {
    $("usage-status").textContent = `Cannot read usage: ${result.error}`;
    return;
  }
  const { data, totals, key } = result.data;
  const who = key ? `key ${key}` : "all keys";
  const audioMin = ((totals.audio_in_s + totals.audio_out_s) / 60).toFixed(1);
  $("usage-status").textContent = `${result.data.from} to ${result.data.to}, ${who}: ${totals.sessions} sessions, ${audioMin} audio minutes, ${totals.llm_tokens} LLM tokens, ${totals.jobs} jobs`;
  $("usage-chart").replaceChildren(drawChart(data, $("usage-metric").value));
  $("usage-rows").replaceChildren(...drawTable(data));
}

function init() {
  initApiKeyBox();
  const today = new Date();
  $("usage-to").value = isoDay(today);
  $("usage-from").value = isoDay(new Date(today.getTime() - 29 * 86400000));
  $("usage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  $("usage-metric").addEventListener("change", load);
  load();
}

init();
