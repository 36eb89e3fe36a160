/**
 * Small DOM helpers: the panel is plain DOM (no React) since it is a handful of lists.
 * Text always goes through textContent, never innerHTML: docstrings come from remote code.
 */

import { IBackend } from './api';

type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: { [name: string]: string | undefined } = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined) {
      element.setAttribute(name, value);
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    element.append(child);
  }
  return element;
}

/** `text` with the first case-insensitive occurrence of `query` wrapped in <mark>. */
export function highlighted(text: string, query: string): Node {
  const index = query ? text.toLowerCase().indexOf(query) : -1;
  if (index < 0) {
    return document.createTextNode(text);
  }
  const span = document.createElement('span');
  span.append(
    text.slice(0, index),
    h('mark', {}, text.slice(index, index + query.length)),
    text.slice(index + query.length)
  );
  return span;
}

/** "3 min", "2 h", "5 days": how long ago a unix time (seconds) was. */
export function age(
  since: number | undefined | null,
  now = Date.now()
): string {
  if (!since) {
    return '';
  }
  const seconds = Math.max(0, Math.round(now / 1000 - since));
  if (seconds < 60) {
    return `${seconds} s`;
  }
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.round(minutes / 60);
  if (hours < 48) {
    return `${hours} h`;
  }
  return `${Math.round(hours / 24)} days`;
}

export function dateOf(since: number | undefined | null): string {
  return since ? new Date(since * 1000).toLocaleString() : 'unknown';
}

/** "512 B", "3.5 kB", "210 MB": a number of bytes for people (decimal units, as the terminal table). */
export function bytes(count: number): string {
  let value = count;
  for (const unit of ['B', 'kB', 'MB', 'GB']) {
    if (value < 1000) {
      return unit === 'B' || value >= 10
        ? `${Math.round(value)} ${unit}`
        : `${value.toFixed(1)} ${unit}`;
    }
    value /= 1000;
  }
  return `${value.toFixed(1)} TB`;
}

/** "2 (210 MB)": how many things a worker holds, and their memory; "0" for none. */
export function held(what?: { count: number; bytes: number }): string {
  return what?.count ? `${what.count} (${bytes(what.bytes)})` : '0';
}

export function plural(count: number, word: string): string {
  return `${count} ${word}${count === 1 ? '' : 's'}`;
}

/**
 * What the tree says of a backend's workers: how many are up, or since when it is offline (a broker with a
 * state directory remembers the backends it served), with the jobs waiting for it and a launch under way.
 */
export function availability(
  backend: IBackend,
  now = Date.now()
): { text: string; title: string; offline: boolean } {
  const workers = backend.workers?.length ?? 0;
  const offline =
    !workers && backend.offline !== undefined && backend.offline !== null;
  const text = [
    workers
      ? plural(workers, 'worker')
      : offline
        ? `offline ${age(backend.offline, now)}`
        : 'no workers'
  ];
  const title = workers
    ? backend.workers.map(w => `${w.host ?? '?'} pid ${w.pid ?? '?'}`)
    : offline
      ? [
          `Offline since ${dateOf(backend.offline)}: .start() queues a job for it`
        ]
      : [];
  if (backend.waiting) {
    text.push(`${backend.waiting} waiting`);
    title.push(`${plural(backend.waiting, 'job')} wait for it at the broker`);
  }
  const launch = backend.launch;
  if (launch) {
    text.push(launch.error ? 'launch failed' : 'launch pending');
    title.push(
      launch.error
        ? `The broker could not launch it: ${launch.error}`
        : `Launched ${dateOf(launch.since)} (${launch.command}); no worker yet`
    );
  }
  return { text: text.join(', '), title: title.join('\n'), offline };
}

/** The one-letter kind badge of a function, class or method, as in Lab's completer. */
export function badge(kind: string): HTMLElement {
  const letter = kind === 'class' ? 'c' : kind === 'method' ? 'm' : 'f';
  return h(
    'span',
    { class: 'jp-DeMagic-badge', 'data-kind': kind, 'aria-hidden': 'true' },
    letter
  );
}

/**
 * `element` (a table) with each cell labelled by its column's heading (`data-label`, unless it has one): a narrow
 * panel stacks the rows as cards of `label value` pairs (see `.jp-DeMagic-stacked` in the CSS).
 */
export function labelled(element: HTMLElement): HTMLElement {
  const headings = Array.from(element.querySelectorAll('thead th')).map(
    th => th.textContent ?? ''
  );
  for (const row of element.querySelectorAll('tbody tr')) {
    Array.from(row.children).forEach((cell, i) => {
      if (!cell.hasAttribute('data-label')) {
        cell.setAttribute('data-label', headings[i] ?? '');
      }
    });
  }
  element.classList.add('jp-DeMagic-stacked');
  return element;
}
