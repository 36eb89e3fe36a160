/**
 * The lower section: the selected method's signature, docstring, parameters and actions.
 */
import { Clipboard } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IBackend, IDask, IGateway, IMember, IParameter, IWorker } from './api';
import { inline, renderDocstring } from './docstring';
import { age, badge, bytes, dateOf, h, held, labelled, plural } from './dom';
import { curlLine, httpRoute } from './http';
import { BrokersModel, ISelection } from './model';
import { ITarget } from './snippets';

export interface IDetailsActions {
  insertCall(target: ITarget): void;
  insertRemoteCell(broker: string, backend: string): void;
  openForm(target: ITarget): void;
}

/**
 * The parameters as a table: four columns in a wide panel; in a narrow one the CSS stacks
 * each row as `name: type = default` over its description, so nothing is clipped.
 */
function parametersTable(params: IParameter[]): HTMLElement {
  const rows = params.map(p => {
    const prefix =
      p.kind === 'VAR_POSITIONAL' ? '*' : p.kind === 'VAR_KEYWORD' ? '**' : '';
    const byDefault = p.required
      ? h('td', {}, h('span', { class: 'jp-DeMagic-required' }, 'required'))
      : h(
          'td',
          { class: 'jp-DeMagic-paramDefault' },
          h('code', {}, p.default_repr ?? '')
        );
    return h(
      'tr',
      { 'data-param': p.name },
      h('td', {}, h('code', {}, prefix + p.name)),
      p.annotation
        ? h(
            'td',
            { class: 'jp-DeMagic-paramType' },
            h('code', {}, p.annotation)
          )
        : h('td', {}),
      byDefault,
      h('td', { class: 'jp-DeMagic-paramDoc' }, ...inline(p.doc ?? ''))
    );
  });
  const element = table(['Name', 'Type', 'Default', 'Description'], rows);
  element.classList.add('jp-DeMagic-paramTable');
  return element;
}

/** A table in the panel's style: a header row of `headings`, then `rows`. */
function table(headings: string[], rows: HTMLElement[]): HTMLElement {
  return h(
    'table',
    { class: 'jp-DeMagic-params' },
    h('thead', {}, h('tr', {}, ...headings.map(text => h('th', {}, text)))),
    h('tbody', {}, ...rows)
  );
}

function section(
  title: string,
  ...content: (Node | string | null)[]
): HTMLElement {
  return h(
    'section',
    { class: 'jp-DeMagic-section' },
    h('h3', {}, title),
    ...content
  );
}

/** A Dask backend's cluster: its size, and its dashboard (linked only if it is an http(s) URL). */
/** Whether calls reach the worker directly (its endpoint) or through the broker; "Calls" counts only the latter. */
function pathCell(w: IWorker): HTMLElement {
  if (!w.direct) {
    return h(
      'td',
      { class: 'jp-DeMagic-path', title: 'Calls go through the broker' },
      'broker'
    );
  }
  const key = w.direct.key
    ? `, CURVE key ${w.direct.key}`
    : ' (loopback, no CURVE)';
  return h(
    'td',
    {
      class: 'jp-DeMagic-path',
      title: `Takes direct calls at ${w.direct.url}${key}; callers that can reach it skip the broker`
    },
    'direct'
  );
}

function daskFacts(dask: IDask): HTMLElement {
  const dashboard = /^https?:\/\//.test(dask.dashboard ?? '')
    ? h(
        'a',
        { href: dask.dashboard, target: '_blank', rel: 'noopener noreferrer' },
        'dashboard'
      )
    : null;
  return h(
    'p',
    { class: 'jp-DeMagic-facts' },
    `Calls run on ${plural(dask.workers, 'Dask worker')} ` +
      `(${plural(dask.threads, 'thread')}), scheduler ${dask.scheduler}`,
    dashboard ? '; ' : null,
    dashboard
  );
}

/**
 * Where the gateway serves a member (or, for a backend, its first function) over HTTP, with a
 * curl line to copy; null when no gateway serves this broker.
 */
function httpSection(
  gateway: IGateway | null | undefined,
  backend: IBackend,
  member?: IMember,
  owner?: IMember
): HTMLElement | null {
  if (!gateway) {
    return null;
  }
  const docs = `${gateway.url.replace(/\/+$/, '')}/docs`;
  const intro = h(
    'p',
    { class: 'jp-DeMagic-facts' },
    'Also callable over HTTP through the gateway; all routes at ',
    h('a', { href: docs, target: '_blank', rel: 'noopener noreferrer' }, docs),
    '.'
  );
  const members = backend.api?.members ?? {};
  const example =
    member ??
    Object.values(members)
      .filter(m => m.kind === 'function')
      .sort((a, b) => a.name.localeCompare(b.name))[0];
  if (!example || example.kind === 'class') {
    const route = `${httpRoute(gateway, backend.name, { name: member?.name ?? 'MEMBER' } as IMember)}${
      member ? '/METHOD' : ''
    }`;
    return section(
      'HTTP',
      intro,
      h('pre', { class: 'jp-DeMagic-http' }, `POST ${route}`)
    );
  }
  const curl = curlLine(gateway, backend.name, example, owner);
  return section(
    'HTTP',
    intro,
    h(
      'pre',
      { class: 'jp-DeMagic-http' },
      `POST ${httpRoute(gateway, backend.name, example, owner)}`
    ),
    h('pre', { class: 'jp-DeMagic-curl' }, curl),
    h(
      'div',
      { class: 'jp-DeMagic-actions' },
      h(
        'button',
        {
          class: 'jp-Button jp-mod-styled jp-mod-reject',
          'data-action': 'copy-curl',
          'data-curl': curl
        },
        'Copy curl'
      )
    )
  );
}

function button(
  label: string,
  action: string,
  primary = false
): HTMLButtonElement {
  return h(
    'button',
    {
      class: `jp-Button jp-mod-styled ${primary ? 'jp-mod-accept' : 'jp-mod-reject'}`,
      'data-action': action
    },
    label
  );
}

export class MemberDetails extends Widget {
  constructor(model: BrokersModel, actions: IDetailsActions) {
    super();
    this.addClass('jp-DeMagic-details');
    this._model = model;
    this._actions = actions;
    this.node.addEventListener('click', this);
    model.changed.connect(() => this.render());
    this.render();
  }

  get selection(): ISelection | null {
    return this._selection;
  }

  set selection(selection: ISelection | null) {
    this._selection = selection;
    this.render();
    this.node.scrollTop = 0; // another item's details start at their top, not where the last ones were
  }

  handleEvent(event: Event): void {
    const clicked = (event.target as HTMLElement).closest<HTMLElement>(
      '[data-action]'
    );
    const action = clicked?.dataset.action;
    if (action === 'copy-curl' && clicked?.dataset.curl) {
      Clipboard.copyToSystem(clicked.dataset.curl);
      return;
    }
    const resolved = this._model.resolve(this._selection);
    if (!action || !resolved || !this._selection) {
      return;
    }
    const { entry, backend, owner, member } = resolved;
    if (action === 'remote-cell') {
      this._actions.insertRemoteCell(entry.url, backend.name);
    } else if (member) {
      const target: ITarget = {
        broker: entry.url,
        backend: backend.name,
        member,
        owner
      };
      if (action === 'insert-call') {
        this._actions.insertCall(target);
      } else if (action === 'open-form') {
        this._actions.openForm(target);
      }
    }
  }

  render(): void {
    const resolved = this._model.resolve(this._selection);
    let content: Node[];
    if (!this._selection) {
      content = [
        h(
          'p',
          { class: 'jp-DeMagic-placeholder' },
          'Select a method to see its documentation and insert a call.'
        )
      ];
    } else if (!resolved) {
      content = [
        h(
          'p',
          { class: 'jp-DeMagic-placeholder' },
          'The selected item is not offered any more.'
        )
      ];
    } else if (!resolved.member) {
      content = this._backend(resolved.backend, resolved.entry.url);
    } else {
      content = this._member(resolved.backend, resolved.member, resolved.owner);
    }
    const http = resolved
      ? httpSection(
          resolved.entry.listing?.gateway,
          resolved.backend,
          resolved.member,
          resolved.owner
        )
      : null;
    if (http) {
      content.push(http);
    }
    this.node.replaceChildren(...content);
  }

  private _backend(backend: IBackend, broker: string): Node[] {
    const workers = backend.workers ?? [];
    const clusters = workers.flatMap(w => (w.dask ? [daskFacts(w.dask)] : []));
    const workerTable = labelled(
      table(
        [
          'Host',
          'PID',
          'Busy',
          'Calls',
          'Sessions',
          'References',
          'Path',
          'Up'
        ],
        workers.map(w =>
          h(
            'tr',
            {},
            h('td', {}, w.host ?? ''),
            h('td', {}, String(w.pid ?? '')),
            h('td', {}, `${w.busy ?? 0}/${w.capacity ?? 1}`),
            h('td', {}, String(w.calls ?? 0)),
            h('td', { class: 'jp-DeMagic-sessions' }, held(w.sessions)),
            h('td', { class: 'jp-DeMagic-refs' }, held(w.refs)),
            pathCell(w),
            h('td', { title: dateOf(w.since) }, age(w.since))
          )
        )
      )
    );
    const sessionCount = workers.reduce(
      (count, w) => count + (w.sessions?.count ?? 0),
      0
    );
    // owner-neutral: how old each session is and what it holds, not whose it is
    const sessions = workers.flatMap(w =>
      (w.sessions?.each ?? []).map(s => ({ worker: w, ...s }))
    );
    const sessionTable = table(
      ['Host', 'PID', 'Age', 'Memory'],
      sessions.map(s =>
        h(
          'tr',
          {},
          h('td', {}, s.worker.host ?? ''),
          h('td', {}, String(s.worker.pid ?? '')),
          h('td', { title: dateOf(s.since) }, age(s.since)),
          h('td', {}, bytes(s.bytes))
        )
      )
    );
    return [
      h(
        'div',
        { class: 'jp-DeMagic-title' },
        h('span', { class: 'jp-DeMagic-titleName' }, backend.name)
      ),
      h(
        'p',
        { class: 'jp-DeMagic-facts' },
        `Backend on ${broker}, alive since ${dateOf(backend.since)}. ` +
          (backend.allow_code
            ? 'Accepts %%remote code cells.'
            : 'Runs only its published functions.')
      ),
      backend.allow_code
        ? h(
            'div',
            { class: 'jp-DeMagic-actions' },
            button('New %%remote cell', 'remote-cell', true)
          )
        : null,
      renderDocstring(backend.api?.sections, backend.api?.doc),
      section(
        plural(workers.length, 'worker'),
        workers.length
          ? workerTable
          : 'No worker is connected: calls wait until one is.'
      ),
      sessionCount
        ? section(plural(sessionCount, '%%remote session'), sessionTable)
        : null,
      clusters.length ? section('Dask cluster', ...clusters) : null
    ].filter((node): node is HTMLElement => node !== null);
  }

  private _member(backend: IBackend, member: IMember, owner?: IMember): Node[] {
    const isClass = member.kind === 'class';
    const name = owner ? `${owner.name}.${member.name}` : member.name;
    const actions = isClass
      ? null
      : h(
          'div',
          { class: 'jp-DeMagic-actions' },
          button('Insert call', 'insert-call', true),
          backend.allow_code
            ? button('New %%remote cell', 'remote-cell')
            : null,
          button('Open form', 'open-form')
        );
    const params = member.parameters ?? [];
    const returns = member.returns;
    const methods = Object.keys(member.methods ?? {}).sort();
    // What the tables below show is left out of the docstring; what they lack stays in it.
    const tabled = new Set<string>();
    if (params.some(p => p.doc)) {
      tabled.add('parameters');
    }
    if (returns?.doc) {
      tabled.add('returns');
    }
    return [
      h(
        'div',
        { class: 'jp-DeMagic-title' },
        badge(isClass ? 'class' : owner ? 'method' : 'function'),
        h('span', { class: 'jp-DeMagic-titleName' }, name),
        h('span', { class: 'jp-DeMagic-meta' }, `in ${backend.name}`)
      ),
      h(
        'pre',
        { class: 'jp-DeMagic-signatureBlock' },
        `${member.name}${member.signature}`
      ),
      actions,
      renderDocstring(member.sections, member.doc || member.summary, tabled),
      params.length
        ? section(
            isClass ? 'Constructor parameters' : 'Parameters',
            parametersTable(params)
          )
        : null,
      returns && (returns.annotation || returns.doc)
        ? section(
            'Returns',
            h(
              'p',
              {},
              returns.annotation ? h('code', {}, returns.annotation) : '',
              ...(returns.doc ? [' — ', ...inline(returns.doc)] : [])
            )
          )
        : null,
      methods.length ? section('Methods', h('p', {}, methods.join(', '))) : null
    ].filter((node): node is HTMLElement => node !== null);
  }

  private _actions: IDetailsActions;
  private _model: BrokersModel;
  private _selection: ISelection | null = null;
}
