// The video studio: POST /video/generate starts a job (202); its progress bar follows the job's Server-Sent
// Events (GET /v1/jobs/{id}/events) and, once it has succeeded, the MP4 from its result URL plays in the preview.

import { api, el } from "/static/common.js";
import { fetchBlob, followJob, formatBytes, secondsSince } from "/static/studio-net.js";

const $ = (id) => document.getElementById(id);

const ui = {
  form: $("video-form"),
  prompt: $("video-prompt"),
  width: $("video-width"),
  height: $("video-height"),
  frames: $("video-frames"),
  steps: $("video-steps"),
  seed: $("video-seed"),
  generate: $("video-generate"),
  cancel: $("video-cancel"),
  status: $("video-status"),
  progress: $("video-progress"),
  bar: $("video-progress-bar"),
  progressText: $("video-progress-text"),
  jobId: $("video-job-id"),
  player: $("video-player"),
  meta: $("video-meta"),
  download: $("video-download"),
};

let current = null; // {id, abort: AbortController} of the job this page follows
let objectUrl = null;

function showProgress(job) {
  const fraction = job.status === "succeeded" ? 1 : Math.min(1, Math.max(0, Number(job.progress) || 0));
  const percent = Math.round(fraction * 100);
  ui.bar.style.width = `${percent}%`;
  ui.progress.setAttribute("aria-valuenow", String(percent));
  ui.progress.dataset.status = job.status || "queued";
  ui.progressText.textContent = `${job.status || "queued"} · ${percent}%`;
}

/** The MP4 among a job's result URLs (the first one when none says .mp4). */
function videoUrl(job) {
  const urls = (job.result_urls || []).map(String);
  return urls.find((u) => /\.mp4($|\?)/i.test(u)) || urls[0] || null;
}

async function showVideo(job, started) {
  const url = videoUrl(job);
  if (!url) {
    ui.status.textContent = "The job succeeded without a result file.";
    return;
  }
  const file = await fetchBlob(url);
  if (!file.ok) {
    ui.status.textContent = `Could not fetch the video: ${file.error}`;
    return;
  }
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = URL.createObjectURL(new Blob([file.blob], { type: "video/mp4" }));
  ui.player.src = objectUrl;
  ui.download.href = objectUrl;
  ui.download.download = `video-${job.id}.mp4`;
  ui.download.setAttribute("aria-disabled", "false");
  const result = job.result || {};
  const facts = [result.frames && `${result.frames} frames`, result.fps && `${result.fps} fps`, result.seed !== undefined && `seed ${result.seed}`];
  ui.meta.textContent = [...facts.filter(Boolean), formatBytes(file.blob.size)].join(" · ");
  ui.status.textContent = `Done in ${secondsSince(started)}.`;
  ui.player.play().catch(() => {}); // muted, so autoplay is allowed; the controls are there either way
}

async function generate(ev) {
  ev.preventDefault();
  const prompt = ui.prompt.value.trim();
  if (!prompt) {
    ui.status.textContent = "Type a prompt first.";
    return;
  }
  const body = {
    prompt,
    resolution: `${Number(ui.width.value)}x${Number(ui.height.value)}`,
    num_frames: Number(ui.frames.value),
    steps: Number(ui.steps.value),
  };
  if (ui.seed.value.trim() !== "") body.seed = Number(ui.seed.value);
  current?.abort.abort();
  const started = performance.now();
  ui.generate.disabled = true;
  ui.status.textContent = "Submitting…";
  showProgress({ status: "queued", progress: 0 });
  const result = await api("/video/generate", { method: "POST", body });
  if (!result.ok) {
    ui.generate.disabled = false;
    ui.status.textContent = result.error;
    ui.progressText.textContent = "Not started.";
    return;
  }
  const id = result.data && (result.data.id || result.data.job_id);
  if (!id) {
    ui.generate.disabled = false;
    ui.status.textContent = "The server answered without a job id.";
    return;
  }
  const job = { id, abort: new AbortController() };
  current = job;
  ui.jobId.textContent = id;
  ui.cancel.disabled = false;
  ui.status.replaceChildren(el("span", { class: "spinner" }), " Generating…");
  try {
    const final = await followJob(id, (update) => current === job && showProgress(update), job.abort.signal);
    if (current !== job) return;
    showProgress(final);
    if (final.status === "succeeded") await showVideo(final, started);
    else ui.status.textContent = final.status === "failed" ? `Failed: ${final.error || "no reason given"}` : "Cancelled.";
  } catch (err) {
    if (current === job) ui.status.textContent = `Lost the job: ${err && err.message ? err.message : err}`;
  } finally {
    if (current === job) {
      ui.generate.disabled = false;
      ui.cancel.disabled = true;
    }
  }
}

async function cancel() {
  if (!current) return;
  ui.cancel.disabled = true;
  const result = await api(`/v1/jobs/${encodeURIComponent(current.id)}`, { method: "DELETE" });
  // The job's own events say when it has stopped; this only reports a refusal.
  if (!result.ok) ui.status.textContent = `Could not cancel: ${result.error}`;
}

/** Wire the video tab. */
export function init() {
  ui.player.addEventListener("loadedmetadata", () => {
    const p = ui.player;
    if (Number.isFinite(p.duration)) ui.meta.textContent = `${p.videoWidth}×${p.videoHeight} · ${p.duration.toFixed(2)} s · ${ui.meta.textContent}`;
  });
  ui.form.addEventListener("submit", generate);
  ui.cancel.addEventListener("click", cancel);
}
