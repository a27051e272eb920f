// voxgate playground: talk to the agent over WebRTC (or the WebSocket protocol as a fallback),
// watch transcripts, flow events and latency. See docs/protocol.md for the events.

import { api, el, formatMs, initApiKeyBox, sessionToken, svg, toast, truncate } from "/static/common.js";

const $ = (id) => document.getElementById(id);

const ui = {
  connect: $("connect"),
  disconnect: $("disconnect"),
  state: $("state"),
  transportLabel: $("transport-label"),
  transportSelect: $("transport-select"),
  sessionId: $("session-id"),
  transcript: $("transcript"),
  emptyHint: $("empty-hint"),
  composer: $("composer"),
  textInput: $("text-input"),
  sendText: $("send-text"),
  voiceSelect: $("voice-select"),
  flowSelect: $("flow-select"),
  dtmf: $("dtmf"),
  latency: $("latency"),
  latencyChart: $("latency-chart"),
  latencyLegend: $("latency-legend"),
  latencySummary: $("latency-summary"),
  eventLog: $("event-log"),
  audio: $("agent-audio"),
  mute: $("mute"),
  clear: $("clear"),
  micLevel: $("mic-level"),
};

const MIC_CONSTRAINTS = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 } };
const INPUT_RATE = 16000;
const ACK_EVERY_MS = 200;
const INTERRUPTED_FLASH_MS = 1200;

// ---------------------------------------------------------------------------------------------
// Session state

const session = {
  transport: null, // WebSocketTransport | WebRtcTransport
  connecting: false,
  userSpeaking: false,
  thinking: false,
  interruptedUntil: 0,
  responses: new Map(), // response_id -> {el, body, text}
  partialEl: null,
  micStream: null,
  meter: null,
  closingByUser: false,
};

const metricsHistory = [];

// ---------------------------------------------------------------------------------------------
// Audio capture (WebSocket transport): AudioWorklet that downsamples to 16 kHz PCM16, 20 ms frames.

const CAPTURE_WORKLET = `
class VoxgateCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / ${INPUT_RATE};
    this.pos = 0; this.acc = 0; this.count = 0;
    this.frame = new Int16Array(${INPUT_RATE / 50});
    this.fill = 0;
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      // Box-filter decimation: average the input samples that fall into each output sample.
      this.acc += channel[i]; this.count++; this.pos += 1;
      if (this.pos >= this.ratio) {
        this.pos -= this.ratio;
        let v = this.acc / this.count;
        this.acc = 0; this.count = 0;
        v = v > 1 ? 1 : v < -1 ? -1 : v;
        this.frame[this.fill++] = v < 0 ? v * 0x8000 : v * 0x7fff;
        if (this.fill === this.frame.length) {
          this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
          this.frame = new Int16Array(${INPUT_RATE / 50});
          this.fill = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("voxgate-capture", VoxgateCapture);
`;

// ---------------------------------------------------------------------------------------------
// Audio playback (WebSocket transport): PCM16 frames scheduled back to back on an AudioContext.

class PcmPlayer {
  constructor(ctx) {
    this.ctx = ctx;
    this.rate = 16000;
    this.nextTime = 0;
    this.sources = new Set();
    this.current = null; // {id, starts: [], durations: [], index, playedMs, ackedMs}
  }

  /** A new response begins: frames from now on belong to it. */
  startResponse(id) {
    this.current = { id, starts: [], durations: [], index: 0, playedMs: 0, ackedMs: 0 };
  }

  /** The response was interrupted: stop and drop everything queued, accept no more frames for it. */
  interrupt() {
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {
        /* already stopped */
      }
    }
    this.sources.clear();
    this.nextTime = 0;
    this.current = null;
  }

  /** Queue one binary frame of PCM16 agent audio. Returns true when it was queued. */
  push(data) {
    if (!this.current || this.ctx.state === "closed") return false;
    const pcm = new Int16Array(data.byteLength >> 1);
    new Uint8Array(pcm.buffer).set(new Uint8Array(data, 0, pcm.length * 2));
    if (!pcm.length) return false;
    const buffer = this.ctx.createBuffer(1, pcm.length, this.rate);
    const samples = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.ctx.destination);
    const now = this.ctx.currentTime;
    // After an underrun (or at the start) leave a small cushion so the next frames join seamlessly.
    if (this.nextTime < now + 0.01) this.nextTime = now + 0.04;
    source.start(this.nextTime);
    source.onended = () => this.sources.delete(source);
    this.sources.add(source);
    this.current.starts.push(this.nextTime);
    this.current.durations.push(buffer.duration);
    this.nextTime += buffer.duration;
    return true;
  }

  get playing() {
    return this.sources.size > 0 && this.ctx.currentTime < this.nextTime;
  }

  /** How much of the current response has really played; an ack {response_id, ms} when one is due. */
  pendingAck() {
    const r = this.current;
    if (!r) return null;
    const now = this.ctx.currentTime;
    while (r.index < r.starts.length && r.starts[r.index] + r.durations[r.index] <= now) {
      r.playedMs += r.durations[r.index] * 1000;
      r.index++;
    }
    const drained = r.index === r.starts.length;
    const ms = Math.round(r.playedMs);
    if (ms > r.ackedMs && (ms - r.ackedMs >= ACK_EVERY_MS || drained)) {
      r.ackedMs = ms;
      return { response_id: r.id, ms };
    }
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Playback estimate (WebRTC transport): the browser plays the remote track itself, so what was
// heard is estimated: audio starts when the server reports `metrics` (first frame released) and
// plays in real time, capped at the response's `audio_ms` once known. An upper bound within the
// jitter buffer's delay, which is honest enough for barge-in bookkeeping.

class PlaybackEstimate {
  constructor() {
    this.current = null; // {id, startedAt, durationMs, ackedMs}
  }

  startResponse(id) {
    this.current = { id, startedAt: null, durationMs: null, ackedMs: 0 };
  }

  audioStarted(id) {
    if (this.current && this.current.id === id && this.current.startedAt === null) this.current.startedAt = performance.now();
  }

  audioDone(id, audioMs) {
    const r = this.current;
    if (!r || r.id !== id) return;
    r.durationMs = audioMs;
    // No `metrics` seen: the server sends at most ~200 ms ahead of playback, so most of it has played.
    if (r.startedAt === null) r.startedAt = performance.now() - Math.max(0, audioMs - 200);
  }

  interrupt() {
    this.current = null;
  }

  playedMs() {
    const r = this.current;
    if (!r || r.startedAt === null) return 0;
    const elapsed = performance.now() - r.startedAt;
    return r.durationMs === null ? elapsed : Math.min(elapsed, r.durationMs);
  }

  get playing() {
    const r = this.current;
    if (!r || r.startedAt === null) return false;
    return r.durationMs === null || performance.now() - r.startedAt < r.durationMs;
  }

  pendingAck() {
    const r = this.current;
    if (!r || r.startedAt === null) return null;
    const ms = Math.round(this.playedMs());
    const finished = r.durationMs !== null && ms >= r.durationMs;
    if (ms > r.ackedMs && (ms - r.ackedMs >= ACK_EVERY_MS || finished)) {
      r.ackedMs = ms;
      return { response_id: r.id, ms };
    }
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Transports. Both expose: start(), send(event), close(), playback (ack/playing), name.

class TransportUnavailable extends Error {}

class WebSocketTransport {
  constructor({ flow, voice, stream, ctx, onEvent, onClose }) {
    this.name = "WebSocket";
    this.flow = flow;
    this.voice = voice;
    this.stream = stream;
    this.ctx = ctx;
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.ws = null;
    this.playback = new PcmPlayer(ctx);
    this.captureNodes = [];
    this.closed = false;
  }

  async start() {
    if (this.stream) await this.ctx.audioWorklet.addModule(workletUrl());
    const url = new URL("/v1/voice", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("sample_rate", String(INPUT_RATE));
    url.searchParams.set("encoding", "pcm_s16le");
    if (this.flow) url.searchParams.set("flow", this.flow);
    const token = await sessionToken(); // the key itself never goes in a URL
    if (token) url.searchParams.set("token", token);
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("the WebSocket connection failed"));
      ws.onclose = (ev) => reject(new Error(`the WebSocket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`));
    });
    ws.onerror = null;
    ws.onclose = (ev) => this.finish(ev.code, ev.reason);
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") {
        let event;
        try {
          event = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (event.type === "session.created" && event.output_audio) this.playback.rate = event.output_audio.sample_rate || 16000;
        if (event.type === "response.started") this.playback.startResponse(event.response_id);
        if (event.type === "response.interrupted") this.playback.interrupt();
        this.onEvent(event);
      } else if (this.playback.push(ev.data)) {
        this.onAudio?.();
      }
    };
    if (this.voice) this.send({ type: "session.update", session: { voice: this.voice } });
    if (this.stream) this.startCapture();
  }

  startCapture() {
    const source = this.ctx.createMediaStreamSource(this.stream);
    const node = new AudioWorkletNode(this.ctx, "voxgate-capture", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1 });
    node.port.onmessage = (ev) => {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(ev.data);
    };
    const mute = this.ctx.createGain(); // keeps the worklet pulled by the graph without making a sound
    mute.gain.value = 0;
    source.connect(node);
    node.connect(mute);
    mute.connect(this.ctx.destination);
    this.captureNodes = [source, node, mute];
  }

  send(event) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(event));
      return true;
    }
    return false;
  }

  close() {
    if (!this.ws) return this.finish(1000, "");
    if (this.ws.readyState === WebSocket.OPEN) {
      this.send({ type: "session.close" });
      // The server answers session.closed and closes; do not wait for ever.
      setTimeout(() => this.ws && this.ws.readyState !== WebSocket.CLOSED && this.ws.close(1000), 1500);
    } else {
      this.ws.close();
      this.finish(1000, "");
    }
  }

  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this.playback.interrupt();
    for (const node of this.captureNodes) node.disconnect();
    if (this.ctx.state !== "closed") this.ctx.close().catch(() => {});
    this.onClose(code, reason);
  }
}

let workletBlobUrl = null;
function workletUrl() {
  if (!workletBlobUrl) workletBlobUrl = URL.createObjectURL(new Blob([CAPTURE_WORKLET], { type: "text/javascript" }));
  return workletBlobUrl;
}

class WebRtcTransport {
  constructor({ flow, voice, stream, audioEl, onEvent, onClose }) {
    this.name = "WebRTC";
    this.flow = flow;
    this.voice = voice;
    this.stream = stream;
    this.audioEl = audioEl;
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.pc = null;
    this.channel = null;
    this.queue = [];
    this.playback = new PlaybackEstimate();
    this.closed = false;
    this.sessionId = null;
  }

  async start() {
    try {
      await this.negotiate();
    } catch (err) {
      this.closed = true; // a failed start reports through the exception, not through onClose
      try {
        this.pc?.close();
      } catch {
        /* never opened */
      }
      throw err;
    }
  }

  async negotiate() {
    if (typeof RTCPeerConnection === "undefined") throw new TransportUnavailable("this browser has no WebRTC");
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    if (this.stream) for (const track of this.stream.getAudioTracks()) pc.addTrack(track, this.stream);
    else pc.addTransceiver("audio", { direction: "recvonly" });
    pc.ontrack = (ev) => {
      this.audioEl.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      this.audioEl.play().catch(() => {});
    };
    const channel = pc.createDataChannel("events");
    this.channel = channel;
    channel.onopen = () => {
      for (const text of this.queue) channel.send(text);
      this.queue = [];
    };
    channel.onmessage = (ev) => {
      let event;
      try {
        event = JSON.parse(typeof ev.data === "string" ? ev.data : new TextDecoder().decode(ev.data));
      } catch {
        return;
      }
      if (event.type === "response.started") this.playback.startResponse(event.response_id);
      if (event.type === "metrics") {
        this.playback.audioStarted(event.response_id);
        this.onAudio?.();
      }
      if (event.type === "response.audio.done") this.playback.audioDone(event.response_id, event.audio_ms);
      if (event.type === "response.interrupted") this.playback.interrupt();
      this.onEvent(event);
    };
    channel.onclose = () => this.finish("the data channel closed");
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") this.finish("the WebRTC connection failed");
      else if (pc.connectionState === "closed") this.finish("");
    };

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, 5000);
    const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type };
    if (this.flow) body.flow = this.flow;
    if (this.voice) body.voice = this.voice;
    const answer = await api("/v1/webrtc/offer", { method: "POST", body });
    if (!answer.ok) {
      if (answer.status === 0 || answer.status === 404 || answer.status === 405 || answer.status === 501) {
        throw new TransportUnavailable(`WebRTC is not available on this server (${answer.error})`);
      }
      throw new Error(answer.error);
    }
    this.sessionId = answer.data.session_id || null;
    await pc.setRemoteDescription({ sdp: answer.data.sdp, type: answer.data.type || "answer" });
  }

  send(event) {
    if (this.closed) return false;
    const text = JSON.stringify(event);
    if (this.channel && this.channel.readyState === "open") this.channel.send(text);
    else this.queue.push(text);
    return true;
  }

  close() {
    if (this.channel && this.channel.readyState === "open") {
      this.channel.send(JSON.stringify({ type: "session.close" }));
      setTimeout(() => this.finish(""), 800);
    } else {
      this.finish("");
    }
  }

  finish(reason) {
    if (this.closed) return;
    this.closed = true;
    this.playback.interrupt();
    try {
      this.channel?.close();
      this.pc?.close();
    } catch {
      /* already closed */
    }
    this.audioEl.srcObject = null;
    this.onClose(null, reason);
  }
}

function waitForIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// ---------------------------------------------------------------------------------------------
// Microphone level meter

function startMeter(stream) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!stream || !Ctx) return null;
  const ctx = new Ctx();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const data = new Float32Array(analyser.fftSize);
  let frame = 0;
  const loop = () => {
    analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (const v of data) sum += v * v;
    const db = 10 * Math.log10(sum / data.length + 1e-10); // dBFS
    const level = Math.max(0, Math.min(1, (db + 60) / 50));
    ui.micLevel.style.width = `${Math.round(level * 100)}%`;
    frame = requestAnimationFrame(loop);
  };
  loop();
  return {
    stop() {
      cancelAnimationFrame(frame);
      ui.micLevel.style.width = "0";
      ctx.close().catch(() => {});
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Connect / disconnect

async function connect() {
  if (session.transport || session.connecting) return;
  session.connecting = true;
  session.closingByUser = false;
  renderControls();
  renderState();
  const flow = ui.flowSelect.value;
  const voice = ui.voiceSelect.value;
  const choice = ui.transportSelect.value;
  // Created inside the click so that playback is allowed to start.
  const Ctx = window.AudioContext || window.webkitAudioContext;
  const ctx = choice !== "webrtc" && Ctx ? new Ctx() : null;
  ctx?.resume().catch(() => {});

  let stream = null;
  try {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error("this page has no microphone access (it needs HTTPS or localhost)");
    stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  } catch (err) {
    addLine(`Microphone unavailable: ${err.message || err.name}. Connected without a microphone: you can type.`, "error-line");
  }
  session.micStream = stream;

  const handlers = { flow, voice, stream, onEvent: handleEvent, onClose: handleClose };
  let transport = null;
  try {
    if (choice !== "websocket") {
      transport = new WebRtcTransport({ ...handlers, audioEl: ui.audio });
      try {
        await transport.start();
      } catch (err) {
        transport = null;
        if (!(err instanceof TransportUnavailable) || choice === "webrtc") throw err;
        addLine(`${err.message}; using the WebSocket.`);
      }
    }
    if (!transport) {
      if (!ctx) throw new Error("this browser has no Web Audio support");
      transport = new WebSocketTransport({ ...handlers, ctx });
      await transport.start();
    } else if (ctx) {
      ctx.close().catch(() => {});
    }
  } catch (err) {
    session.connecting = false;
    stopMic();
    if (ctx && ctx.state !== "closed") ctx.close().catch(() => {});
    addLine(`Could not connect: ${err.message || err}`, "error-line");
    renderControls();
    renderState();
    return;
  }
  transport.onAudio = () => {
    session.thinking = false;
  };
  session.transport = transport;
  session.connecting = false;
  // A read-only handle for diagnostics and the browser tests (WebRTC stats, which transport is in use).
  window.voxgate = { transport: transport.name.toLowerCase(), pc: transport.pc || null, sessionId: transport.sessionId };
  session.meter = startMeter(stream);
  ui.transportLabel.textContent = transport.name;
  ui.transportLabel.classList.remove("hidden");
  if (transport.sessionId) ui.sessionId.textContent = transport.sessionId;
  renderControls();
  renderState();
  ui.textInput.focus();
}

function disconnect() {
  if (!session.transport) return;
  session.closingByUser = true;
  session.transport.close();
}

function stopMic() {
  session.meter?.stop();
  session.meter = null;
  for (const track of session.micStream?.getTracks() || []) track.stop();
  session.micStream = null;
}

function handleClose(code, reason) {
  const wasUser = session.closingByUser;
  session.transport = null;
  session.userSpeaking = false;
  session.thinking = false;
  stopMic();
  for (const r of session.responses.values()) r.el.classList.remove("streaming");
  removePartial();
  ui.transportLabel.classList.add("hidden");
  if (!wasUser && (code === null ? reason : code !== 1000)) {
    addLine(`Connection closed${code ? ` (code ${code}${reason ? `: ${reason}` : ""})` : reason ? `: ${reason}` : ""}.`, "error-line");
  } else {
    addLine("Disconnected.");
  }
  renderControls();
  renderState();
}

function send(event) {
  if (!session.transport) return false;
  const ok = session.transport.send(event);
  if (ok && event.type !== "output_audio.played") logEvent("out", event);
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Server events

function handleEvent(event) {
  if (!event || typeof event.type !== "string") return;
  if (event.type !== "response.text.delta") logEvent("in", event);
  switch (event.type) {
    case "session.created":
      ui.sessionId.textContent = event.session_id || "";
      addLine("Session started. Speak, or type below.");
      break;
    case "session.updated":
      if (event.session && event.session.voice) addLine(`Voice set to ${event.session.voice}.`);
      break;
    case "speech.started":
      session.userSpeaking = true;
      break;
    case "speech.stopped":
      session.userSpeaking = false;
      break;
    case "transcript.partial":
      showPartial(event.text);
      break;
    case "transcript.final":
      removePartial();
      addTurn("user-turn", event.source === "text" ? "You · typed" : "You", event.text);
      session.thinking = true;
      session.userSpeaking = false;
      break;
    case "response.started":
      startResponse(event);
      session.thinking = true;
      break;
    case "response.text.delta":
      responseFor(event.response_id).appendDelta(event.delta || "");
      break;
    case "response.text.done": {
      const r = responseFor(event.response_id);
      r.setText(event.text || "");
      break;
    }
    case "response.audio.done":
      responseFor(event.response_id).el.classList.remove("streaming");
      session.thinking = false;
      break;
    case "response.interrupted":
      markInterrupted(event);
      session.thinking = false;
      session.interruptedUntil = performance.now() + INTERRUPTED_FLASH_MS;
      break;
    case "metrics":
      addMetrics(event);
      break;
    case "dtmf.received":
      addLine(`Key ${event.digit} received.`);
      break;
    case "flow.node_entered":
      addLine(["Node ", el("code", {}, event.node), event.node_type ? ` (${event.node_type})` : ""], "flow-line");
      break;
    case "flow.variable_set":
      addLine(["Set ", el("code", {}, event.name), " = ", el("code", {}, truncate(JSON.stringify(event.value), 80))], "flow-line");
      break;
    case "flow.llm_exit":
      addLine(["Exit ", el("code", {}, event.exit), " from ", el("code", {}, event.node)], "flow-line");
      break;
    case "flow.http":
      addLine(["HTTP ", el("code", {}, event.node), `: ${event.ok ? "ok" : "failed"}${event.status ? ` (${event.status})` : ""}${event.error ? ` ${event.error}` : ""}`], event.ok ? "flow-line" : "error-line");
      break;
    case "flow.transfer":
      addLine(["Transfer to ", el("code", {}, event.target)], "flow-line");
      break;
    case "flow.error":
      addLine(["Flow error", event.node ? [" at ", el("code", {}, event.node)] : "", `: ${event.message}`], "error-line");
      break;
    case "flow.ended":
      addLine(["Flow ended: ", el("code", {}, event.reason)], "flow-line");
      session.thinking = false;
      break;
    case "error":
      addLine([el("code", {}, event.code || "error"), ` ${event.message || ""}`], "error-line");
      if (event.code === "response_failed") session.thinking = false;
      break;
    case "session.closed":
      addLine(`Session closed: ${event.reason}.`);
      break;
    default:
      break;
  }
  renderState();
}

// ---------------------------------------------------------------------------------------------
// Conversation view

function nearBottom() {
  const t = ui.transcript;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
}

function append(node) {
  const stick = nearBottom();
  ui.emptyHint?.remove();
  if (session.partialEl && node !== session.partialEl) ui.transcript.insertBefore(node, session.partialEl);
  else ui.transcript.append(node);
  if (stick) ui.transcript.scrollTop = ui.transcript.scrollHeight;
  return node;
}

function addLine(content, kind = "") {
  return append(el("div", { class: `event-line ${kind}` }, content));
}

function addTurn(cls, meta, text) {
  return append(el("div", { class: `turn ${cls}` }, el("span", { class: "meta" }, meta), el("span", { class: "body" }, text)));
}

function showPartial(text) {
  if (!text) return;
  if (!session.partialEl) {
    session.partialEl = el("div", { class: "turn partial-turn" }, el("span", { class: "meta" }, "You · listening…"), el("span", { class: "body" }));
    append(session.partialEl);
  }
  const stick = nearBottom();
  session.partialEl.querySelector(".body").textContent = text;
  if (stick) ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function removePartial() {
  session.partialEl?.remove();
  session.partialEl = null;
}

function startResponse(event) {
  const meta = el("span", { class: "meta" }, "Agent", event.resumed_from ? " · resumed" : "");
  const body = el("span", { class: "body" });
  const node = el("div", { class: "turn agent-turn streaming", dataset: { responseId: event.response_id || "" } }, meta, body);
  const record = {
    el: node,
    text: "",
    appendDelta(delta) {
      const stick = nearBottom();
      this.text += delta;
      body.textContent = this.text;
      if (stick) ui.transcript.scrollTop = ui.transcript.scrollHeight;
    },
    setText(text) {
      this.text = text;
      body.textContent = text;
    },
  };
  session.responses.set(event.response_id, record);
  append(node);
  return record;
}

function responseFor(id) {
  return session.responses.get(id) || startResponse({ response_id: id });
}

function markInterrupted(event) {
  const r = responseFor(event.response_id);
  r.el.classList.remove("streaming");
  r.el.classList.add("interrupted");
  const reason = { barge_in: "you spoke", typed: "you typed", cancelled: "cancelled" }[event.reason] || event.reason || "";
  const heard = event.heard_text ? ["heard: “", event.heard_text, "”"] : "nothing was heard";
  r.el.append(el("span", { class: "heard" }, el("b", {}, "Interrupted"), reason ? ` (${reason})` : "", event.played_ms != null ? ` after ${Math.round(event.played_ms)} ms · ` : " · ", heard));
}

// ---------------------------------------------------------------------------------------------
// Latency readout and chart

const SERIES = [
  { key: "stt_ms", label: "STT", color: "#4d5d6d" },
  { key: "llm_ttft_ms", label: "LLM TTFT", color: "#6f8396" },
  { key: "tts_ttfb_ms", label: "TTS TTFB", color: "#9fb2c3" },
  { key: "voice_to_voice_ms", label: "Voice→voice", color: "#3ccfb4" },
];
const MAX_BARS = 16;

function addMetrics(event) {
  metricsHistory.push(event);
  renderLatency();
}

function renderLatency() {
  const last = metricsHistory[metricsHistory.length - 1];
  for (const node of ui.latency.querySelectorAll("[data-metric]")) {
    const value = last ? last[node.dataset.metric] : null;
    node.replaceChildren(formatMs(value), value != null && value < 10000 ? el("small", {}, " ms") : "");
  }
  const v2v = metricsHistory.map((m) => m.voice_to_voice_ms).filter((v) => typeof v === "number").sort((a, b) => a - b);
  ui.latencySummary.textContent = metricsHistory.length
    ? `${metricsHistory.length} turn${metricsHistory.length === 1 ? "" : "s"}${v2v.length ? ` · median v2v ${Math.round(median(v2v))} ms` : ""}`
    : "";

  const turns = metricsHistory.slice(-MAX_BARS);
  const width = 300;
  const height = 130;
  const pad = { left: 34, right: 4, top: 8, bottom: 18 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const maxValue = Math.max(100, ...turns.flatMap((m) => SERIES.map((s) => (typeof m[s.key] === "number" ? m[s.key] : 0))));
  const top = niceCeil(maxValue);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Latency per turn" });
  for (const frac of [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - frac);
    chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, stroke: "#2a3541", "stroke-width": 1 }));
    chart.append(svg("text", { x: pad.left - 4, y: y + 3.5, "text-anchor": "end", fill: "#8b98a5", "font-size": 9 }, frac === 0 ? "0" : `${Math.round(top * frac)}`));
  }
  if (!turns.length) {
    chart.append(svg("text", { x: pad.left + plotW / 2, y: pad.top + plotH / 2, "text-anchor": "middle", fill: "#5d6b78", "font-size": 11 }, "No turns yet"));
  }
  const slot = plotW / MAX_BARS;
  const barW = Math.max(2, (slot - 4) / SERIES.length);
  const firstIndex = metricsHistory.length - turns.length;
  turns.forEach((m, i) => {
    const x0 = pad.left + i * slot + 2;
    SERIES.forEach((s, j) => {
      const value = m[s.key];
      if (typeof value !== "number") return;
      const h = Math.max(1, (Math.min(value, top) / top) * plotH);
      chart.append(
        svg("rect", { x: x0 + j * barW, y: pad.top + plotH - h, width: barW - 0.5, height: h, fill: s.color, rx: 1 },
          svg("title", {}, `Turn ${firstIndex + i + 1} · ${s.label}: ${Math.round(value)} ms`)),
      );
    });
    chart.append(svg("text", { x: x0 + (slot - 4) / 2, y: height - 5, "text-anchor": "middle", fill: "#5d6b78", "font-size": 8.5 }, String(firstIndex + i + 1)));
  });
  ui.latencyChart.replaceChildren(chart);
}

function median(sorted) {
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function niceCeil(value) {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

// ---------------------------------------------------------------------------------------------
// State indicator, controls, event log

const STATE_LABELS = {
  disconnected: "Disconnected",
  connecting: "Connecting…",
  listening: "Listening",
  "user-speaking": "You are speaking",
  thinking: "Thinking…",
  "agent-speaking": "Agent speaking",
  interrupted: "Interrupted",
};

function currentState() {
  if (session.connecting) return "connecting";
  if (!session.transport) return "disconnected";
  if (performance.now() < session.interruptedUntil) return "interrupted";
  if (session.userSpeaking) return "user-speaking";
  if (session.transport.playback.playing) return "agent-speaking";
  if (session.thinking) return "thinking";
  return "listening";
}

function renderState() {
  const state = currentState();
  if (ui.state.dataset.state !== state) {
    ui.state.dataset.state = state;
    ui.state.textContent = STATE_LABELS[state];
  }
}

function renderControls() {
  const live = Boolean(session.transport);
  const busy = session.connecting;
  ui.connect.disabled = live || busy;
  ui.connect.textContent = busy ? "Connecting…" : "Connect";
  ui.disconnect.disabled = !live;
  ui.textInput.disabled = !live;
  ui.sendText.disabled = !live;
  ui.flowSelect.disabled = live || busy;
  ui.transportSelect.disabled = live || busy;
  ui.mute.disabled = !live || !session.micStream;
  for (const button of ui.dtmf.querySelectorAll("button")) button.disabled = !live;
  if (!live) {
    ui.mute.textContent = "Mute mic";
    ui.mute.setAttribute("aria-pressed", "false");
  }
}

const MAX_LOG_LINES = 300;
function logEvent(direction, event) {
  const stick = ui.eventLog.scrollHeight - ui.eventLog.scrollTop - ui.eventLog.clientHeight < 40;
  const time = new Date().toLocaleTimeString([], { hour12: false });
  ui.eventLog.append(el("div", { class: direction }, `${time} ${direction === "in" ? "←" : "→"} ${truncate(JSON.stringify(event), 220)}`));
  while (ui.eventLog.childElementCount > MAX_LOG_LINES) ui.eventLog.firstElementChild.remove();
  if (stick) ui.eventLog.scrollTop = ui.eventLog.scrollHeight;
}

// Every 100 ms: acknowledge played audio, refresh the state (playback end, interruption flash).
setInterval(() => {
  const t = session.transport;
  if (t) {
    const ack = t.playback.pendingAck();
    if (ack) send({ type: "output_audio.played", ...ack });
  }
  renderState();
}, 100);

// ---------------------------------------------------------------------------------------------
// Pickers

async function loadVoices() {
  const result = await api("/v1/voices");
  if (!result.ok) {
    addLine(`Could not list voices: ${result.error}`, "error-line");
    return;
  }
  for (const voice of result.data.voices || []) {
    const extra = [voice.language, voice.engine].filter(Boolean).join(", ");
    ui.voiceSelect.append(el("option", { value: voice.id }, extra ? `${voice.id} (${extra})` : voice.id));
  }
}

async function loadFlows() {
  const wanted = new URLSearchParams(location.search).get("flow");
  const result = await api("/v1/flows");
  if (!result.ok) addLine(`Could not list flows: ${result.error}`, "error-line");
  const flows = (result.ok && result.data.flows) || [];
  for (const flow of flows) {
    ui.flowSelect.append(el("option", { value: flow.id }, `${flow.name || flow.id}${flow.version ? ` · v${flow.version}` : ""}`));
  }
  if (wanted) {
    if (!flows.some((f) => f.id === wanted)) ui.flowSelect.append(el("option", { value: wanted }, wanted));
    ui.flowSelect.value = wanted;
  }
}

function buildKeypad() {
  for (const digit of ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"]) {
    const button = el("button", { type: "button", disabled: true, "aria-label": `Key ${digit}`, dataset: { digit } }, digit);
    button.addEventListener("click", () => pressKey(digit));
    ui.dtmf.append(button);
  }
}

function pressKey(digit) {
  if (!send({ type: "input_dtmf", digit })) return;
  const button = ui.dtmf.querySelector(`[data-digit="${CSS.escape(digit)}"]`);
  if (button) {
    button.classList.add("pressed");
    setTimeout(() => button.classList.remove("pressed"), 180);
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

ui.connect.addEventListener("click", () => connect());
ui.disconnect.addEventListener("click", () => disconnect());
ui.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = ui.textInput.value.trim();
  if (!text) return;
  if (send({ type: "input_text", text })) ui.textInput.value = "";
});
ui.voiceSelect.addEventListener("change", () => {
  if (session.transport && ui.voiceSelect.value) send({ type: "session.update", session: { voice: ui.voiceSelect.value } });
});
ui.mute.addEventListener("click", () => {
  const tracks = session.micStream?.getAudioTracks() || [];
  const muted = ui.mute.getAttribute("aria-pressed") !== "true";
  for (const track of tracks) track.enabled = !muted; // a disabled track sends silence
  ui.mute.setAttribute("aria-pressed", String(muted));
  ui.mute.textContent = muted ? "Unmute mic" : "Mute mic";
});
ui.clear.addEventListener("click", () => {
  removePartial();
  session.responses.clear();
  ui.transcript.replaceChildren();
});
document.addEventListener("keydown", (ev) => {
  const target = ev.target;
  if (!session.transport || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (target instanceof HTMLElement && target.closest("input, textarea, select")) return;
  if (/^[0-9*#]$/.test(ev.key)) pressKey(ev.key);
});
window.addEventListener("pagehide", () => session.transport?.close());

initApiKeyBox();
buildKeypad();
renderLatency();
renderControls();
renderState();
SERIES.forEach((s) => ui.latencyLegend.append(el("span", {}, el("i", { style: `background:${s.color}` }), s.label)));
loadVoices();
loadFlows();
