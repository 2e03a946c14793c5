/** A completion Promise settled at most once by `settle(err?)` (resolve when err is undefined, else reject). Its
 * rejection is marked handled, so a copy nobody awaits never becomes an unhandled rejection. */
export function settleOnce(): { promise: Promise<void>; settle: (err?: unknown) => void } {
  let settled = false;
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {});
  return {
    promise,
    settle: (err?: unknown) => {
      if (settled) return;
      settled = true;
      if (err === undefined) resolve();
      else reject(err);
    },
  };
}
