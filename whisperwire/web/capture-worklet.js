// The audio thread's half of the page: mixes the microphone to mono, resamples it to 16 kHz
// and hands the page frames of 16-bit samples, ready for the socket.
//
// Resampling is a windowed-sinc low-pass filter evaluated at each output instant. It is written
// here because an AudioWorklet runs only what its one file holds (no build step, no imports),
// and the browser's own resampling is not offered for a live microphone at another rate.

const PHASES = 256; // output instants are rounded to 1/256 of an input sample
const ZERO_CROSSINGS = 8; // on each side of the filter's centre

class Capture16k extends AudioWorkletProcessor {
  constructor({ processorOptions }) {
    super();
    this.frameSamples = processorOptions.frameSamples;
    this.step = sampleRate / processorOptions.targetRate; // input samples per output sample
    // Pass 0.45 of the lower rate: speech keeps what matters, and nothing folds back.
    const cutoff = (0.45 * Math.min(sampleRate, processorOptions.targetRate)) / sampleRate;
    this.half = Math.ceil(ZERO_CROSSINGS / (2 * cutoff));
    this.table = kernels(cutoff, this.half);
    this.input = new Float32Array(0); // the samples the filter may still need
    this.next = 0; // where the next output sample falls, in input samples from this.input[0]
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.port.onmessage = ({ data }) => {
      if (data === "flush") this.flush();
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels.length > 0) {
      const mono = new Float32Array(channels[0].length);
      for (const channel of channels) {
        for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
      }
      this.resample(mono);
    }
    return true;
  }

  resample(samples) {
    const input = new Float32Array(this.input.length + samples.length);
    input.set(this.input);
    input.set(samples, this.input.length);
    this.input = input;
    // An output instant rounds up to the next input sample at most: its last weight must exist.
    while (Math.floor(this.next) + 1 + this.half < input.length) {
      let at = Math.floor(this.next);
      let phase = Math.round((this.next - at) * PHASES);
      if (phase === PHASES) {
        at += 1;
        phase = 0;
      }
      const weights = this.table[phase];
      let value = 0;
      for (let k = -this.half; k <= this.half; k++) {
        const j = at + k;
        if (j >= 0) value += input[j] * weights[k + this.half];
      }
      this.emit(value);
      this.next += this.step;
    }
    // Keep only what the next output samples still reach.
    const consumed = Math.floor(this.next) - this.half;
    if (consumed > 0) {
      this.input = input.slice(consumed);
      this.next -= consumed;
    }
  }

  emit(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = Math.round(clipped < 0 ? clipped * 32768 : clipped * 32767);
    this.sumSquares += clipped * clipped;
    if (this.filled === this.frameSamples) this.send();
  }

  send() {
    if (this.filled === 0) return;
    const pcm = this.frame.slice(0, this.filled).buffer;
    const level = Math.sqrt(this.sumSquares / this.filled);
    this.port.postMessage({ pcm, level }, [pcm]);
    this.filled = 0;
    this.sumSquares = 0;
  }

  // The microphone has stopped: push the filter's tail out, send the last partial frame.
  flush() {
    this.resample(new Float32Array(this.half + Math.ceil(this.step) + 1));
    this.send();
    this.port.postMessage({ flushed: true });
  }
}

// For each phase, the filter's weights for the input samples around an output instant,
// normalised so that a constant signal keeps its level.
function kernels(cutoff, half) {
  const table = [];
  for (let phase = 0; phase < PHASES; phase++) {
    const offset = phase / PHASES;
    const weights = new Float32Array(2 * half + 1);
    let sum = 0;
    for (let k = -half; k <= half; k++) {
      const x = k - offset;
      const sinc = x === 0 ? 1 : Math.sin(2 * Math.PI * cutoff * x) / (2 * Math.PI * cutoff * x);
      const t = x / (half + 1); // Blackman window over (-1, 1)
      const window = 0.42 + 0.5 * Math.cos(Math.PI * t) + 0.08 * Math.cos(2 * Math.PI * t);
      weights[k + half] = sinc * window;
      sum += weights[k + half];
    }
    for (let i = 0; i < weights.length; i++) weights[i] /= sum;
    table.push(weights);
  }
  return table;
}

registerProcessor("capture-16k", Capture16k);
