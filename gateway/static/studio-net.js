// Network helpers for the studio pages: binary answers (audio, video) fetched with the API key, and a job
// followed to its end over Server-Sent Events. Both go through fetch rather than <audio src> or EventSource
// because those cannot send the Authorization header a server with an API key needs.

import { api, apiKey, describeError } from "/static/common.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/** Whether a job status is final (the job will not change any more). */
export const isTerminal = (status) => TERMINAL.has(status);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function headers(accept) {
  const h = { Accept: accept };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(response) {
  const text = await response.text().catch(() => "");
  let data = text;
  try {
    data = JSON.parse(text);
  } catch {
    /* not JSON: describeError shows the start of the text */
  }
  return describeError(response.status, data);
}

/**
 * GET (or POST a JSON body to) a route that answers with a file. Never throws: resolves to
 * {ok, status, blob, headers, error}.
 */
export async function fetchBlob(path, { method = "GET", body, signal } = {}) {
  const h = headers("*/*");
  if (body !== undefined) h["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (err) {
    return { ok: false, status: 0, error: `cannot reach the server (${err && err.message ? err.message : err})` };
  }
  if (!response.ok) return { ok: false, status: response.status, error: await errorOf(response) };
  try {
    return { ok: true, status: response.status, blob: await response.blob(), headers: response.headers, error: null };
  } catch (err) {
    return { ok: false, status: response.status, error: `the answer was cut short (${err && err.message ? err.message : err})` };
  }
}

/** One Server-Sent Event's data as an object (a JSON object, or {message} for plain text). */
function eventData(lines) {
  const text = lines.join("\n");
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" ? value : { value };
  } catch {
    return { message: text };
  }
}

/**
 * Read a job's event stream, merging each event's data into the job record (an event may carry the whole job,
 * {job: ...}, or just {progress}). Calls onUpdate(job) per event; resolves to the last record when the job is
 * final or the stream ends. Throws on an HTTP error or a broken connection.
 */
async function readEvents(path, job, onUpdate, signal) {
  const response = await fetch(path, { headers: headers("text/event-stream"), signal });
  if (!response.ok || !response.body) throw new Error(await errorOf(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return job;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""));
      if (!data.length) continue; // a comment (keep-alive) or an event without data
      const update = eventData(data);
      job = { ...job, ...(update.job && typeof update.job === "object" ? update.job : update) };
      onUpdate(job);
      if (isTerminal(job.status)) {
        reader.cancel().catch(() => {});
        return job;
      }
    }
  }
}

/**
 * Follow job `id` until it is final: progress from GET /v1/jobs/{id}/events, and GET /v1/jobs/{id} polled
 * once a second if the stream breaks or ends before the job does. Resolves to the final job record; rejects
 * when the job is unknown or `signal` aborts.
 */
export async function followJob(id, onUpdate, signal) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  let job = { id };
  try {
    job = await readEvents(`${path}/events`, job, onUpdate, signal);
  } catch (err) {
    if (signal && signal.aborted) throw err;
    // The stream failed: polling below says whether the job itself is still there.
  }
  while (!isTerminal(job.status)) {
    const result = await api(path, { signal });
    if (result.aborted) throw new DOMException("aborted", "AbortError");
    if (result.ok) {
      job = { ...job, ...result.data };
      onUpdate(job);
      if (isTerminal(job.status)) break;
    } else if (result.status >= 400 && result.status < 500) {
      throw new Error(result.error);
    }
    await sleep(1000);
  }
  return job;
}

/** Format a byte count for people. */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** Seconds since `start` (a performance.now() value), one decimal. */
export const secondsSince = (start) => `${((performance.now() - start) / 1000).toFixed(1)} s`;
