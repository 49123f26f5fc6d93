// The page's half: the settings become the metadata, the microphone goes through the capture
// worklet to the socket, and the server's messages become the transcript.

const $ = (id) => document.getElementById(id);
const TARGET_RATE = 16000;
const FRAME_SAMPLES = 320; // 20 ms at 16 kHz
const SAVED = "whisperwire.settings"; // the API key is never saved

let session = null;

// --------------------------------------------------------------------------- settings

function defaultUrl() {
  const url = new URL("v1/websocket", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function metadata() {
  const whisper = {
    audio_language: $("audio-language").value.trim(),
    show_word_timestamps: $("word-timestamps").checked,
  };
  const prompt = $("prompt").value.trim();
  if (prompt) whisper.prompt = prompt;
  return {
    streaming_vad_config: {
      threshold: Number($("vad-threshold").value),
      min_silence_duration_ms: Math.round(Number($("min-silence").value)),
      speech_pad_ms: Math.round(Number($("speech-pad").value)),
    },
    streaming_params: {
      encoding: "pcm_s16le",
      sample_rate: TARGET_RATE,
      enable_partial_transcripts: $("partials").checked,
      partial_transcript_interval_s: Number($("partial-interval").value),
    },
    whisper_params: whisper,
  };
}

function socketUrl() {
  const url = new URL($("url").value);
  const key = $("api-key").value;
  if (key) url.searchParams.set("api_key", key); // browsers cannot send an Authorization header
  return url.href;
}

function saveSettings() {
  const values = {};
  for (const field of $("settings").elements) {
    if (!field.id || field.id === "api-key" || field.tagName === "FIELDSET") continue;
    values[field.id] = field.type === "checkbox" ? field.checked : field.value;
  }
  localStorage.setItem(SAVED, JSON.stringify(values));
}

function restoreSettings() {
  $("url").value = defaultUrl();
  let values = {};
  try {
    values = JSON.parse(localStorage.getItem(SAVED)) || {};
  } catch {
    return;
  }
  for (const [id, value] of Object.entries(values)) {
    const field = $(id);
    if (!field) continue;
    if (field.type === "checkbox") field.checked = Boolean(value);
    else field.value = value;
  }
}

// --------------------------------------------------------------------------- the session

async function start() {
  if (!$("settings").reportValidity()) return;
  hideError();
  const current = { ws: null, media: null, context: null, opened: false, pending: [], stopping: false };
  session = current;
  setState("connecting", "Connecting…");
  try {
    current.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    current.context = new AudioContext();
    await current.context.resume(); // created after an await, it may start suspended
    await current.context.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
  } catch (error) {
    endSession(current);
    setState("error", "No microphone");
    showError(`The microphone is not available: ${error.message}`);
    return;
  }
  if (current.stopping) {
    // Stopped while the browser was asking for the microphone.
    endSession(current);
    setState("idle", "Ready");
    return;
  }
  current.ws = openSocket(current);
  current.node = new AudioWorkletNode(current.context, "capture-16k", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    processorOptions: { targetRate: TARGET_RATE, frameSamples: FRAME_SAMPLES },
  });
  current.node.port.onmessage = ({ data }) => onCaptured(current, data);
  current.source = current.context.createMediaStreamSource(current.media);
  current.source.connect(current.node);
}

function openSocket(current) {
  const ws = new WebSocket(socketUrl());
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    current.opened = true;
    ws.send(JSON.stringify(metadata()));
    // Audio captured while the socket was opening goes first, in order.
    for (const pcm of current.pending.splice(0)) ws.send(pcm);
    if (!current.stopping) setState("listening", "Listening");
  };
  ws.onmessage = ({ data }) => onMessage(JSON.parse(data));
  ws.onclose = (event) => onClose(current, event);
  return ws;
}

function onCaptured(current, data) {
  if (data.pcm) {
    if (current.opened && current.ws.readyState === WebSocket.OPEN) current.ws.send(data.pcm);
    else if (!current.opened) current.pending.push(data.pcm);
    $("level").value = Math.max(0, Math.min(1, (20 * Math.log10(data.level + 1e-9) + 60) / 60));
  }
  if (data.flushed && current.ws.readyState === WebSocket.OPEN) {
    // Everything captured is sent: the server finalizes it, sends the finals, closes with 1000.
    current.ws.send(JSON.stringify({ type: "terminate" }));
  }
}

function stop() {
  const current = session;
  if (!current || current.stopping) return;
  current.stopping = true;
  stopMicrophone(current);
  if (current.opened && current.ws.readyState === WebSocket.OPEN) {
    setState("finishing", "Finishing…");
    current.node.port.postMessage("flush"); // then terminate, once the last frame is out
  } else {
    current.ws?.close();
  }
}

function stopMicrophone(current) {
  for (const track of current.media?.getTracks() ?? []) track.stop();
  current.source?.disconnect();
  $("level").value = 0;
}

function endSession(current) {
  stopMicrophone(current);
  current.context?.close();
  if (session === current) session = null;
  $("toggle").textContent = "Start microphone";
  $("settings-fields").disabled = false;
}

function onClose(current, event) {
  const wasOpen = current.opened;
  endSession(current);
  if (event.code === 1000) {
    setState("finished", "Finished");
  } else if (!wasOpen) {
    setState("error", "Not connected");
    showError(
      `Could not connect to ${$("url").value}: the server refused the connection ` +
        "(a missing or wrong API key?) or cannot be reached.",
    );
  } else {
    setState("error", `Closed (${event.code})`);
    if ($("error").hidden) showError(`The server closed the session (code ${event.code}) ${event.reason}`);
  }
  hidePartial();
}

// --------------------------------------------------------------------------- messages

function onMessage(message) {
  if (message.type === "error") {
    const { code, message: text, field } = message.error;
    showError(`${code}: ${text}${field ? ` (${field})` : ""}`);
    return;
  }
  if (message.type !== "transcription") return;
  showReadouts(message);
  if (!message.is_final) {
    showPartial(message);
    return;
  }
  hidePartial();
  if (message.transcript.trim()) addFinal(message);
}

function showPartial(message) {
  const partial = $("partial");
  partial.textContent = message.transcript.trim();
  partial.dataset.num = message.transcription_num;
  partial.hidden = !message.transcript.trim();
  $("placeholder").hidden = true;
  scrollToEnd();
}

function hidePartial() {
  const partial = $("partial");
  partial.hidden = true;
  partial.textContent = "";
}

function addFinal(message) {
  const item = document.createElement("li");
  item.className = "final";
  item.dataset.num = message.transcription_num;
  const segments = message.segments;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = segments.length
    ? `${clock(segments[0].start_time)} – ${clock(segments[segments.length - 1].end_time)}`
    : "";
  const text = document.createElement("span");
  text.className = "text";
  const words = segments.flatMap((segment) => segment.word_timestamps ?? []);
  if (words.length) {
    for (const word of words) text.append(wordSpan(word), " ");
  } else {
    text.textContent = message.transcript.trim();
  }
  const tags = document.createElement("span");
  tags.className = "tags";
  tags.textContent = [language(message), confidence(message)].filter(Boolean).join(" · ");
  item.append(time, text, tags);
  $("finals").append(item);
  $("placeholder").hidden = true;
  scrollToEnd();
}

function wordSpan(word) {
  const span = document.createElement("span");
  span.className = word.prob < 0.5 ? "word unsure" : "word";
  span.textContent = word.word.trim();
  span.title = `${word.start_time.toFixed(2)}–${word.end_time.toFixed(2)} s · p ${word.prob.toFixed(2)}`;
  return span;
}

function showReadouts(message) {
  if (message.language_code) $("language").textContent = language(message);
  if (message.is_final && message.confidence !== null) $("confidence").textContent = message.confidence.toFixed(2);
}

function language(message) {
  if (!message.language_code) return "";
  const detected = message.language_prob === null ? "" : ` (${message.language_prob.toFixed(2)})`;
  return message.language_code + detected;
}

function confidence(message) {
  return message.confidence === null ? "" : `conf ${message.confidence.toFixed(2)}`;
}

function clock(seconds) {
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - minutes * 60).toFixed(2).padStart(5, "0")}`;
}

// --------------------------------------------------------------------------- the page

function setState(state, label) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = label;
  const active = state === "connecting" || state === "listening" || state === "finishing";
  $("toggle").textContent = active ? "Stop" : "Start microphone";
  $("toggle").disabled = state === "finishing";
  $("settings-fields").disabled = active;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function scrollToEnd() {
  const transcript = document.querySelector(".transcript");
  transcript.scrollTop = transcript.scrollHeight;
}

restoreSettings();
$("settings").addEventListener("change", saveSettings);
$("settings").addEventListener("submit", (event) => event.preventDefault());
$("toggle").addEventListener("click", () => (session ? stop() : start()));
$("clear").addEventListener("click", () => {
  $("finals").replaceChildren();
  hidePartial();
  $("placeholder").hidden = session !== null;
});
