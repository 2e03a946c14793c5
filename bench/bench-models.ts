/** Random-weight checkpoints the model benchmarks share: generated once (seed 1) into $TMPDIR/moe-offload-bench. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { makeModel, type PresetName } from '../lib/index.js';

/** The folder of `preset` (with `layers` decoder layers when given), made on first use. */
export async function benchModel(preset: PresetName, layers?: number): Promise<string> {
  const dir = path.join(os.tmpdir(), 'moe-offload-bench', `${preset}${layers ? `-L${layers}` : ''}`);
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    const t0 = performance.now();
    await makeModel(dir, { preset, seed: 1, ...(layers ? { config: { num_hidden_layers: layers } } : {}) });
    console.log(`  made ${preset} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  return dir;
}
