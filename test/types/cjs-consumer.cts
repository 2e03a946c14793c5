// Type-checked by test/package.test.ts: a CommonJS program requiring the package by name sees the typed API.
import moe = require('moe-offload');

const be: moe.Backend = moe.openBackend();
const f: Float32Array = new moe.HostTensor('f32', [4]).data;
const p: moe.PinnedBuffer = be.allocPinned(16);
const s: moe.Stream = be.createStream({ priority: 'high' });
// @ts-expect-error: shape must be an array
new moe.HostTensor('f32', 4);
export = { f, p, s };
