/** Order statistics of a small sample (benchmark rounds), with linear interpolation between ranks. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (sorted.length - 1) * q;
  const low = Math.floor(rank);
  const high = Math.ceil(rank);
  const lowValue = sorted[low] as number;
  const highValue = sorted[high] as number;
  return lowValue + (highValue - lowValue) * (rank - low);
}

export function median(values: readonly number[]): number {
  return quantile(values, 0.5);
}

/** Median with the spread a reader needs to judge noise: min, quartiles, max. */
export interface Summary {
  median: number;
  min: number;
  p25: number;
  p75: number;
  max: number;
  n: number;
}

export function summarize(values: readonly number[]): Summary {
  return {
    median: median(values),
    min: values.length === 0 ? Number.NaN : Math.min(...values),
    p25: quantile(values, 0.25),
    p75: quantile(values, 0.75),
    max: values.length === 0 ? Number.NaN : Math.max(...values),
    n: values.length,
  };
}
