/**
 * A job's progress and age as text, as the Python side writes them (de_magic/caller/tables.py).
 */
import { IProgress } from './api';

/** `desc: n/total unit`, as the Python side writes a progress report. */
export function progressText(progress: IProgress | null | undefined): string {
  if (!progress) {
    return '';
  }
  const total = progress.total ? `/${progress.total}` : '';
  return `${progress.desc || 'progress'}: ${progress.n}${total} ${progress.unit ?? ''}`.trimEnd();
}

/** How long ago `since` (seconds since the epoch) was, in its largest unit. */
export function age(since: number, now: number = Date.now() / 1000): string {
  const seconds = Math.max(0, now - since);
  for (const [unit, size] of [
    ['d', 86400],
    ['h', 3600],
    ['min', 60]
  ] as const) {
    if (seconds >= size) {
      return `${Math.round(seconds / size)} ${unit}`;
    }
  }
  return `${Math.round(seconds)} s`;
}
