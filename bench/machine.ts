/** The machine a benchmark ran on, recorded with every result file (CPU, cores, GPU, driver, date). */
import os from 'node:os';

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
