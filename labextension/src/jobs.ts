/**
 * The "Jobs" section of the sidebar: the user's jobs on each broker (status, progress, age),
 * with "Insert fetch" for a finished one. Polled while the panel is visible, like the tree.
 */
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { IJob, IJobs, fetchJobs } from './api';
import { h, labelled } from './dom';
import { age, progressText } from './jobtext';
import { BrokersModel } from './model';

export interface IJobsActions {
  /** `what`: the job's call (`member`, `Class.method`) or `%%remote` for a cell run as a job. */
  insertFetch(broker: string, id: string, what: string): void;
}

/** Seconds between polls of the jobs; a job's progress changes more often than the listing. */
const INTERVAL = 3000;

export class JobsView extends Widget {
  constructor(
    private _model: BrokersModel,
    private _actions: IJobsActions
  ) {
    super({ node: h('div', { class: 'jp-DeMagic-jobs' }) });
    this._poll = new Poll({
      factory: () => this._fetch(),
      frequency: { interval: INTERVAL, backoff: true, max: 10 * INTERVAL },
      name: 'de-magic:jobs',
      standby: () => _model.standby()
    });
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  /** Ask every broker again now. */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  private async _fetch(): Promise<void> {
    const urls = this._model.brokers.map(entry => entry.url);
    const answers = await Promise.all(
      urls.map(url =>
        fetchJobs(url).catch((reason: Error): IJobs => ({
          reachable: false,
          error: reason.message
        }))
      )
    );
    this._render(urls, answers);
  }

  private _render(urls: string[], answers: IJobs[]): void {
    const sections = urls.map((url, i) => this._broker(url, answers[i]));
    this.node.replaceChildren(...sections);
  }

  private _broker(url: string, answer: IJobs): HTMLElement {
    const jobs = answer.jobs ?? [];
    let body: HTMLElement;
    if (!answer.reachable) {
      // the tree says why, at length (a CURVE broker's how-to): once is enough
      body = h(
        'div',
        { class: 'jp-DeMagic-jobsNote', title: answer.error ?? '' },
        'The broker did not answer (its entry above says why).'
      );
    } else if (!jobs.length) {
      body = h('div', { class: 'jp-DeMagic-jobsNote' }, 'No jobs of yours.');
    } else {
      // newest first: a job just started is seen without scrolling
      const newest = [...jobs].sort((a, b) => b.created - a.created);
      body = labelled(
        h(
          'table',
          { class: 'jp-DeMagic-jobsTable' },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              ...['status', 'what', 'progress', 'age', ''].map(head =>
                h('th', {}, head)
              )
            )
          ),
          h('tbody', {}, ...newest.map(job => this._row(url, job)))
        )
      );
    }
    return h(
      'section',
      { class: 'jp-DeMagic-jobsBroker', 'data-broker': url },
      h('h3', {}, url),
      body
    );
  }

  private _row(url: string, job: IJob): HTMLElement {
    let action: HTMLElement | null = null;
    // a %%remote job's output shows as it comes (%remote_result): worth fetching while it runs too
    const live =
      job.what === '%%remote' &&
      (job.status === 'running' || job.status === 'queued');
    if (job.status === 'done' || live) {
      action = h(
        'button',
        { class: 'jp-Button jp-mod-minimal', title: 'Insert fetch' },
        'Insert fetch'
      );
      action.addEventListener('click', () =>
        this._actions.insertFetch(url, job.id, job.what)
      );
    }
    return h(
      'tr',
      {
        class: 'jp-DeMagic-job',
        'data-status': job.status,
        title: job.reason || job.id
      },
      // stacked in a narrow panel, status, call and progress speak for themselves
      h('td', { 'data-label': '' }, job.status),
      h('td', { 'data-label': '' }, `${job.what} on ${job.backend}`),
      h('td', { 'data-label': '' }, progressText(job.progress)),
      h('td', {}, age(job.created)),
      h('td', { 'data-label': '' }, action)
    );
  }

  private _poll: Poll;
}
