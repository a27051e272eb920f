// The image studio: prompt and parameters to POST /image/generate (the studio API's shape: it answers with the
// PNG and the seed that reproduces it), results kept in a gallery for this page's life.

import { api, el, truncate } from "/static/common.js";
import { fetchBlob, followJob, secondsSince } from "/static/studio-net.js";

const $ = (id) => document.getElementById(id);

const ui = {
  form: $("image-form"),
  prompt: $("image-prompt"),
  negative: $("image-negative"),
  width: $("image-width"),
  height: $("image-height"),
  steps: $("image-steps"),
  guidance: $("image-guidance"),
  seed: $("image-seed"),
  generate: $("image-generate"),
  status: $("image-status"),
  gallery: $("image-gallery"),
  clear: $("image-clear"),
};

/** The request body from the form; a blank seed lets the server pick one (it reports it back). */
function requestBody() {
  const body = {
    prompt: ui.prompt.value.trim(),
    width: Number(ui.width.value),
    height: Number(ui.height.value),
    steps: Number(ui.steps.value),
    guidance_scale: Number(ui.guidance.value),
  };
  const negative = ui.negative.value.trim();
  if (negative) body.negative_prompt = negative;
  if (ui.seed.value.trim() !== "") body.seed = Number(ui.seed.value);
  return body;
}

function addToGallery(body, answer, src, took) {
  ui.gallery.querySelector(".empty-note")?.remove();
  const width = answer.width || body.width;
  const height = answer.height || body.height;
  const seed = answer.seed ?? body.seed ?? null; // null: a job record that does not say
  const useSeed = el("button", { type: "button", class: "small", title: "Generate again from this seed", disabled: seed === null }, "Use seed");
  useSeed.addEventListener("click", () => {
    ui.seed.value = String(seed);
    ui.prompt.value = body.prompt;
    ui.prompt.focus();
  });
  const figure = el(
    "figure",
    { dataset: { seed: seed === null ? "" : String(seed), jobId: answer.job_id || "" } },
    el("img", { src, alt: body.prompt, width, height }),
    el(
      "figcaption",
      {},
      el("span", { class: "prompt", title: body.prompt }, truncate(body.prompt, 120)),
      el("span", {}, `${width}×${height} · ${body.steps} steps · seed ${seed ?? "?"} · ${took}`),
      el("span", { class: "row" }, useSeed, el("a", { class: "btn small", href: src, download: `image-${seed ?? answer.job_id}.png` }, "Download"))
    )
  );
  ui.gallery.prepend(figure);
}

async function generate(ev) {
  ev.preventDefault();
  const body = requestBody();
  if (!body.prompt) {
    ui.status.textContent = "Type a prompt first.";
    return;
  }
  const started = performance.now();
  ui.generate.disabled = true;
  ui.status.replaceChildren(el("span", { class: "spinner" }), " Generating…");
  const timer = setInterval(() => {
    ui.status.lastChild.textContent = ` Generating… ${secondsSince(started)}`;
  }, 500);
  const result = await api("/image/generate", { method: "POST", body });
  clearInterval(timer);
  ui.generate.disabled = false;
  if (!result.ok) {
    ui.status.textContent = result.error;
    return;
  }
  const answer = result.data || {};
  if (typeof answer.image === "string") {
    const took = secondsSince(started);
    addToGallery(body, answer, `data:image/png;base64,${answer.image}`, took);
    ui.status.textContent = `Done in ${took}.`;
  } else if (result.status === 202 && (answer.id || answer.job_id)) {
    await fromJob(body, answer.id || answer.job_id, started);
  } else {
    ui.status.textContent = "The server answered without an image.";
  }
}

/** A generation that outlasted the server's wait (media_wait_timeout_s) answers 202 with its job: follow it. */
async function fromJob(body, id, started) {
  ui.generate.disabled = true;
  ui.status.textContent = `Still running as job ${id}…`;
  try {
    const job = await followJob(id, (update) => {
      ui.status.textContent = `Job ${id}: ${update.status || "queued"} ${Math.round((Number(update.progress) || 0) * 100)}%`;
    });
    if (job.status !== "succeeded") {
      ui.status.textContent = job.status === "failed" ? `Failed: ${job.error || "no reason given"}` : "Cancelled.";
      return;
    }
    for (const url of job.result_urls || []) {
      const file = await fetchBlob(url);
      if (!file.ok) {
        ui.status.textContent = `Could not fetch ${url}: ${file.error}`;
        return;
      }
      const result = job.result || {};
      const answer = { seed: result.seed, width: result.width, height: result.height, job_id: id };
      addToGallery(body, answer, URL.createObjectURL(file.blob), secondsSince(started));
    }
    ui.status.textContent = `Done in ${secondsSince(started)}.`;
  } catch (err) {
    ui.status.textContent = `Lost job ${id}: ${err && err.message ? err.message : err}`;
  } finally {
    ui.generate.disabled = false;
  }
}

/** Wire the image tab. */
export function init() {
  ui.form.addEventListener("submit", generate);
  ui.clear.addEventListener("click", () => {
    ui.gallery.replaceChildren(el("p", { class: "empty-note" }, "Generated images appear here, newest first."));
  });
}
