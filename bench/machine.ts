/** The machine a benchmark ran on, recorded with every result file (CPU, cores, GPU, driver, date). */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { info } from '../lib/index.js';

export interface Machine {
  date: string;
  host: string;
  cpu: string;
  cores: number;
  isa: string;
  memoryGiB: number;
  /** Linux's transparent-huge-page mode (info().host), null elsewhere. */
  transparentHugePages: string | null;
  gpu: string;
  driver: string | null;
  node: string;
  moeOffload: string;
}

export function machine(): Machine {
  const i = info();
  return {
    date: new Date().toISOString(),
    host: os.hostname(),
    cpu: i.cpu.model,
    cores: i.cpu.cores,
    isa: i.cpu.bestIsa,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    transparentHugePages: i.host.transparentHugePages,
    gpu: i.cuda.available ? i.cuda.devices.map((d) => d.name).join(', ') : `none (${i.cuda.reason})`,
    driver: i.cuda.driverVersion,
    node: process.version,
    moeOffload: i.version,
  };
}

/**
 * The path a benchmark saves its results to: bench/results/<stem>-<YYYY-MM-DD><suffix>[-<MOE_BENCH_LABEL>].json (the
 * folder created). A label keeps runs of one day apart: results files are never overwritten by a later run's.
 * @example resultsFile('throughput-cpu', pack ? '' : '-rowmajor') // bench/results/throughput-cpu-2026-11-27-rowmajor.json
 */
export function resultsFile(stem: string, suffix = ''): string {
  const dir = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const label = process.env['MOE_BENCH_LABEL'];
  return path.join(dir, `${stem}-${new Date().toISOString().slice(0, 10)}${suffix}${label ? `-${label}` : ''}.json`);
}
