// The speech studio: text, voice (GET /v1/voices), speed and format to POST /v1/audio/speech; the answer plays
// in the page and can be downloaded.

import { api, el } from "/static/common.js";
import { fetchBlob, formatBytes, secondsSince } from "/static/studio-net.js";

const $ = (id) => document.getElementById(id);

const ui = {
  form: $("tts-form"),
  text: $("tts-text"),
  voice: $("tts-voice"),
  format: $("tts-format"),
  speed: $("tts-speed"),
  speedValue: $("tts-speed-value"),
  speak: $("tts-speak"),
  status: $("tts-status"),
  meta: $("tts-meta"),
  audio: $("tts-audio"),
  download: $("tts-download"),
};

let objectUrl = null;

/**
 * A streamed WAV says "length unknown" (0xFFFFFFFF) in its RIFF and data sizes, since the server sends the
 * header before the audio exists (docs/speech-openai.md). Once the whole file is here, write the real sizes so
 * that players know its duration and the downloaded file is an ordinary WAV.
 */
export function fixWavSizes(buffer) {
  const view = new DataView(buffer);
  const tag = (at) => String.fromCharCode(...new Uint8Array(buffer, at, 4));
  if (buffer.byteLength < 44 || tag(0) !== "RIFF" || tag(8) !== "WAVE") return buffer;
  view.setUint32(4, buffer.byteLength - 8, true);
  let at = 12;
  while (at + 8 <= buffer.byteLength) {
    const size = view.getUint32(at + 4, true);
    if (tag(at) === "data") {
      view.setUint32(at + 4, buffer.byteLength - at - 8, true);
      break;
    }
    if (size === 0xffffffff) break; // an unknown-length chunk before the data: leave the file as it is
    at += 8 + size + (size % 2);
  }
  return buffer;
}

async function loadVoices() {
  const result = await api("/v1/voices");
  if (!result.ok) {
    ui.status.textContent = `Could not list voices: ${result.error}`;
    return;
  }
  const voices = result.data.voices || [];
  if (!voices.length) return; // keep "Server default" (an OpenAI voice name speaks with the default voice)
  ui.voice.replaceChildren(
    ...voices.map((v) => {
      const extra = [v.language, v.engine].filter(Boolean).join(", ");
      return el("option", { value: v.id }, extra ? `${v.id} (${extra})` : v.id);
    })
  );
  if (result.data.default_voice && voices.some((v) => v.id === result.data.default_voice)) ui.voice.value = result.data.default_voice;
}

function showSpeed() {
  ui.speedValue.textContent = `${Number(ui.speed.value).toFixed(2)}×`;
}

async function speak(ev) {
  ev.preventDefault();
  const input = ui.text.value.trim();
  if (!input) {
    ui.status.textContent = "Type some text first.";
    return;
  }
  const format = ui.format.value;
  const voice = ui.voice.value;
  const started = performance.now();
  ui.speak.disabled = true;
  ui.status.textContent = "Synthesizing…";
  const result = await fetchBlob("/v1/audio/speech", {
    method: "POST",
    body: { model: "tts-1", input, voice, response_format: format, speed: Number(ui.speed.value) },
  });
  ui.speak.disabled = false;
  if (!result.ok) {
    ui.status.textContent = result.error;
    return;
  }
  let blob = result.blob;
  if (format === "wav") blob = new Blob([fixWavSizes(await blob.arrayBuffer())], { type: "audio/wav" });
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = URL.createObjectURL(blob);
  const spokenBy = result.headers.get("x-voice") || voice;
  ui.audio.src = objectUrl;
  ui.download.href = objectUrl;
  ui.download.download = `speech-${spokenBy}.${format === "opus" ? "ogg" : format}`;
  ui.download.setAttribute("aria-disabled", "false");
  ui.meta.textContent = `${spokenBy} · ${formatBytes(blob.size)}`;
  ui.status.textContent = `Ready in ${secondsSince(started)}.`;
  try {
    await ui.audio.play();
  } catch {
    ui.status.textContent += " Press play to listen.";
  }
}

/** Wire the speech tab and list the voices (after the API key box has read a key from the address). */
export function init() {
  ui.audio.addEventListener("loadedmetadata", () => {
    if (Number.isFinite(ui.audio.duration)) ui.meta.textContent += ` · ${ui.audio.duration.toFixed(2)} s`;
  });
  ui.speed.addEventListener("input", showSpeed);
  ui.form.addEventListener("submit", speak);
  showSpeed();
  loadVoices();
}
