/**
 * The tree: broker → backends → functions and classes → methods, with a filter box.
 */
import {
  addBelowIcon,
  caretDownIcon,
  caretRightIcon,
  closeIcon,
  errorIcon,
  LabIcon,
  refreshIcon
} from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { IBackend, IMember } from './api';
import {
  age,
  availability,
  badge,
  dateOf,
  h,
  highlighted,
  plural
} from './dom';
import { brokerIcon } from './icons';
import { BrokerEntry, BrokersModel, ISelection } from './model';
import { ITarget } from './snippets';

/** What the tree asks its owner to do. */
export interface ITreeActions {
  insertCall(target: ITarget): void;
  removeBroker(url: string): void;
  /** Ask for the public key of the broker at `url` and store it. */
  addBrokerKey(url: string): void;
}

type RowKind = 'broker' | 'backend' | 'class' | 'function' | 'method';

interface IRow {
  key: string;
  kind: RowKind;
  selection: ISelection | null;
  expandable: boolean;
  target?: ITarget;
}

function keyOf(...parts: string[]): string {
  return JSON.stringify(parts);
}

function sameSelection(a: ISelection | null, b: ISelection | null): boolean {
  return (
    !!a &&
    !!b &&
    a.broker === b.broker &&
    a.backend === b.backend &&
    a.owner === b.owner &&
    a.member === b.member
  );
}

function sortedMembers(
  members: { [name: string]: IMember } | undefined
): IMember[] {
  return Object.values(members ?? {}).sort((a, b) =>
    a.name.localeCompare(b.name)
  );
}

/** "7 s": the time left until `time` (ms since the epoch), never below zero. */
function secondsUntil(time: number): string {
  return `${Math.max(0, Math.ceil((time - Date.now()) / 1000))} s`;
}

/**
 * Under a broker that does not answer: which try comes next and when, or that it is under
 * way, and a button to try at once.
 */
function retryNote(entry: BrokerEntry): HTMLElement {
  const attempt = entry.failures + 1;
  const next = entry.nextTry;
  const status = entry.retrying
    ? [`Retrying now (attempt ${attempt})…`]
    : next !== null
      ? [
          `Retrying automatically: attempt ${attempt} in `,
          h('span', { 'data-next-try': String(next) }, secondsUntil(next)),
          '. '
        ]
      : ['Retrying automatically. '];
  return h(
    'span',
    { class: 'jp-DeMagic-retry' },
    ...status,
    entry.retrying
      ? null
      : h(
          'button',
          {
            class: 'jp-DeMagic-link',
            'data-action': 'refresh',
            'data-broker': entry.url
          },
          'Retry now'
        )
  );
}

export class BackendsTree extends Widget {
  constructor(model: BrokersModel, actions: ITreeActions) {
    super();
    this.model = model;
    this._actions = actions;
    this.addClass('jp-DeMagic-treePanel');
    this._filter = h('input', {
      class: 'jp-DeMagic-filter',
      type: 'search',
      placeholder: 'Filter backends and methods',
      'aria-label': 'Filter backends and methods',
      spellcheck: 'false'
    });
    this._list = h('ul', {
      class: 'jp-DeMagic-tree',
      role: 'tree',
      tabindex: '0'
    });
    this.node.append(
      h('div', { class: 'jp-DeMagic-filterBox' }, this._filter),
      this._list
    );
    this._filter.addEventListener('input', () => this.render());
    this._list.addEventListener('click', this);
    this._list.addEventListener('keydown', this);
    model.changed.connect(this.render, this);
  }

  readonly model: BrokersModel;

  dispose(): void {
    if (this._countdown !== null) {
      window.clearInterval(this._countdown);
    }
    super.dispose();
  }

  get selection(): ISelection | null {
    return this._selection;
  }

  get selectionChanged(): ISignal<this, ISelection | null> {
    return this._selectionChanged;
  }

  get query(): string {
    return this._filter.value.trim().toLowerCase();
  }

  set query(value: string) {
    this._filter.value = value;
    this.render();
  }

  select(selection: ISelection | null): void {
    if (
      sameSelection(selection, this._selection) ||
      selection === this._selection
    ) {
      return;
    }
    this._selection = selection;
    this.render();
    this._selectionChanged.emit(selection);
  }

  handleEvent(event: Event): void {
    if (event.type === 'click') {
      this._onClick(event as MouseEvent);
    } else if (event.type === 'keydown') {
      this._onKeyDown(event as KeyboardEvent);
    }
  }

  protected onAfterShow(msg: Message): void {
    this.render();
  }

  /** Scroll the row of the broker at `url` into view (a broker just added lands at the end). */
  reveal(url: string): void {
    this.render();
    this._list
      .querySelector(
        `.jp-DeMagic-row[data-kind=broker][data-broker="${CSS.escape(url)}"]`
      )
      ?.scrollIntoView({ block: 'nearest' });
  }

  /** Rebuild the list; cheap enough for a few brokers with tens of methods each. */
  render(): void {
    if (!this.isVisible && this.isAttached) {
      return;
    }
    this._rows.clear();
    const query = this.query;
    const items: Node[] = [];
    if (this.model.serverError) {
      items.push(
        h(
          'li',
          { class: 'jp-DeMagic-message jp-mod-error', role: 'alert' },
          this.model.serverError
        )
      );
    }
    for (const entry of this.model.brokers) {
      items.push(this._renderBroker(entry, query));
    }
    if (this.model.brokers.length === 0 && !this.model.serverError) {
      items.push(
        h('li', { class: 'jp-DeMagic-message' }, 'Looking for brokers…')
      );
    }
    this._list.replaceChildren(...items);
    this._followCountdowns();
  }

  /** Count down the retries on screen every second (a full render each second would be waste). */
  private _followCountdowns(): void {
    const counting = this._list.querySelector('[data-next-try]') !== null;
    if (counting && this._countdown === null) {
      this._countdown = window.setInterval(() => this._tickCountdowns(), 1000);
    } else if (!counting && this._countdown !== null) {
      window.clearInterval(this._countdown);
      this._countdown = null;
    }
  }

  private _tickCountdowns(): void {
    for (const span of this._list.querySelectorAll<HTMLElement>(
      '[data-next-try]'
    )) {
      span.textContent = secondsUntil(Number(span.dataset.nextTry));
    }
  }

  private _isExpanded(key: string, byDefault: boolean): boolean {
    return this._toggled.has(key) ? !byDefault : byDefault;
  }

  private _toggle(key: string): void {
    if (this._toggled.has(key)) {
      this._toggled.delete(key);
    } else {
      this._toggled.add(key);
    }
    this.render();
  }

  private _row(
    row: IRow,
    depth: number,
    expanded: boolean,
    content: Node[],
    actions: Node[] = []
  ): HTMLElement {
    const caret = row.expandable
      ? (expanded ? caretDownIcon : caretRightIcon).element({
          tag: 'span',
          className: 'jp-DeMagic-caret'
        })
      : h('span', { class: 'jp-DeMagic-caret' });
    const selected = sameSelection(row.selection, this._selection);
    const element = h(
      'div',
      {
        class: `jp-DeMagic-row${selected ? ' jp-mod-selected' : ''}`,
        'data-kind': row.kind,
        style: `--jp-demagic-depth: ${depth}`
      },
      caret,
      ...content,
      actions.length
        ? h('span', { class: 'jp-DeMagic-rowActions' }, ...actions)
        : null
    );
    this._rows.set(element, row);
    return element;
  }

  private _item(
    row: HTMLElement,
    expanded: boolean | null,
    children: Node[]
  ): HTMLElement {
    const info = this._rows.get(row)!;
    const li = h(
      'li',
      {
        role: 'treeitem',
        class: 'jp-DeMagic-item',
        'data-kind': info.kind,
        'aria-expanded': expanded === null ? undefined : String(expanded),
        'aria-selected': String(row.classList.contains('jp-mod-selected'))
      },
      row
    );
    if (expanded && children.length) {
      li.append(h('ul', { role: 'group' }, ...children));
    }
    return li;
  }

  private _button(icon: LabIcon, title: string, action: string): HTMLElement {
    return h(
      'button',
      {
        class: 'jp-DeMagic-rowButton',
        title,
        'aria-label': title,
        'data-action': action
      },
      icon.element({ tag: 'span' })
    );
  }

  private _renderBroker(entry: BrokerEntry, query: string): HTMLElement {
    const key = keyOf(entry.url);
    const expanded = query !== '' || this._isExpanded(key, true);
    const row: IRow = {
      key,
      kind: 'broker',
      selection: null,
      expandable: true
    };
    const status: Node[] = [];
    if (entry.error) {
      status.push(
        errorIcon.element({
          tag: 'span',
          className: 'jp-DeMagic-status',
          title: entry.error
        })
      );
    } else if (entry.listing) {
      status.push(
        h(
          'span',
          { class: 'jp-DeMagic-meta' },
          plural(entry.backends.length, 'backend')
        )
      );
    }
    const info = entry.listing?.broker;
    const title =
      `Broker ${entry.url}` +
      (entry.origin === 'default'
        ? ' (default)'
        : entry.origin === 'user'
          ? ' (added in settings)'
          : '') +
      (info?.since ? `\nUp since ${dateOf(info.since)}` : '') +
      (info?.protocol ? `\nProtocol ${info.protocol}` : '');
    const actions = [this._button(refreshIcon, 'Refresh now', 'refresh')];
    if (entry.origin === 'user') {
      actions.push(
        this._button(closeIcon, 'Remove this broker from the list', 'remove')
      );
    }
    const element = this._row(
      row,
      0,
      expanded,
      [
        brokerIcon.element({ tag: 'span', className: 'jp-DeMagic-icon' }),
        // tcp:// goes without saying, and the port is what tells brokers apart in a narrow panel.
        h(
          'span',
          { class: 'jp-DeMagic-label', title },
          entry.url.replace(/^tcp:\/\//, '')
        ),
        ...status
      ],
      actions
    );
    element.dataset.broker = entry.url;
    const children: Node[] = [];
    if (entry.error) {
      children.push(
        h(
          'li',
          { class: 'jp-DeMagic-message jp-mod-error', role: 'alert' },
          h('span', {}, entry.error),
          entry.needsKey
            ? h(
                'button',
                {
                  class: 'jp-DeMagic-link',
                  'data-action': 'add-key',
                  'data-broker': entry.url
                },
                'Add its public key…'
              )
            : null,
          retryNote(entry)
        )
      );
    } else if (entry.loading) {
      children.push(h('li', { class: 'jp-DeMagic-message' }, 'Connecting…'));
    } else {
      const backends = entry.backends;
      let shown = 0;
      for (const backend of backends) {
        const item = this._renderBackend(entry, backend, query);
        if (item) {
          children.push(item);
          shown++;
        }
      }
      if (backends.length === 0) {
        children.push(
          h(
            'li',
            { class: 'jp-DeMagic-message' },
            'No backend is connected to this broker.'
          )
        );
      } else if (shown === 0) {
        children.push(
          h(
            'li',
            { class: 'jp-DeMagic-message' },
            `Nothing matches “${query}”.`
          )
        );
      }
    }
    return this._item(element, expanded, children);
  }

  private _renderBackend(
    entry: BrokerEntry,
    backend: IBackend,
    query: string
  ): HTMLElement | null {
    const selection: ISelection = { broker: entry.url, backend: backend.name };
    const key = keyOf(entry.url, backend.name);
    // A backend whose name matches shows all its members; otherwise only the matching ones.
    const selfMatch =
      query === '' || backend.name.toLowerCase().includes(query);
    const children: Node[] = [];
    for (const member of sortedMembers(backend.api?.members)) {
      const item = this._renderMember(
        entry,
        backend,
        member,
        selfMatch ? '' : query,
        query
      );
      if (item) {
        children.push(item);
      }
    }
    if (!selfMatch && children.length === 0) {
      return null;
    }
    const expanded = query !== '' || this._isExpanded(key, false);
    const workers = backend.workers?.length ?? 0;
    const available = availability(backend);
    const meta: Node[] = [
      h(
        'span',
        {
          class: `jp-DeMagic-meta${workers ? '' : ' jp-mod-warn'}`,
          title: available.title
        },
        available.text
      )
    ];
    if (backend.allow_code) {
      meta.push(
        h(
          'span',
          { class: 'jp-DeMagic-tag', title: 'Accepts %%remote code cells' },
          'code'
        )
      );
    }
    if (backend.since) {
      meta.push(
        h(
          'span',
          {
            class: 'jp-DeMagic-meta jp-mod-optional',
            title: `Alive since ${dateOf(backend.since)}`
          },
          `up ${age(backend.since)}`
        )
      );
    }
    const row: IRow = { key, kind: 'backend', selection, expandable: true };
    const element = this._row(row, 1, expanded, [
      h(
        'span',
        { class: 'jp-DeMagic-label jp-DeMagic-name' },
        highlighted(backend.name, query)
      ),
      ...meta
    ]);
    element.dataset.backend = backend.name;
    if (children.length === 0) {
      children.push(
        h(
          'li',
          { class: 'jp-DeMagic-message' },
          'This backend offers no functions.'
        )
      );
    }
    const item = this._item(element, expanded, children);
    if (available.offline) {
      item.classList.add('jp-mod-offline'); // greyed: its members are known, no worker is up
    }
    return item;
  }

  private _renderMember(
    entry: BrokerEntry,
    backend: IBackend,
    member: IMember,
    query: string,
    highlight: string
  ): HTMLElement | null {
    const isClass = member.kind === 'class';
    const selfMatch = query === '' || member.name.toLowerCase().includes(query);
    const children: Node[] = [];
    if (isClass) {
      for (const method of sortedMembers(member.methods)) {
        if (selfMatch || method.name.toLowerCase().includes(query)) {
          children.push(
            this._renderLeaf(entry, backend, method, member, highlight)
          );
        }
      }
      if (!selfMatch && children.length === 0) {
        return null;
      }
    } else if (!selfMatch) {
      return null;
    } else {
      return this._renderLeaf(entry, backend, member, undefined, highlight);
    }
    const key = keyOf(entry.url, backend.name, member.name);
    const expanded =
      query !== '' || highlight !== '' || this._isExpanded(key, false);
    const selection: ISelection = {
      broker: entry.url,
      backend: backend.name,
      owner: member.name
    };
    const row: IRow = { key, kind: 'class', selection, expandable: true };
    const element = this._row(row, 2, expanded, [
      badge('class'),
      h(
        'span',
        { class: 'jp-DeMagic-label jp-DeMagic-name' },
        highlighted(member.name, highlight)
      ),
      h('span', { class: 'jp-DeMagic-signature' }, member.signature)
    ]);
    element.dataset.member = member.name;
    return this._item(element, expanded, children);
  }

  private _renderLeaf(
    entry: BrokerEntry,
    backend: IBackend,
    member: IMember,
    owner: IMember | undefined,
    highlight: string
  ): HTMLElement {
    const selection: ISelection = {
      broker: entry.url,
      backend: backend.name,
      owner: owner?.name,
      member: member.name
    };
    const key = keyOf(entry.url, backend.name, owner?.name ?? '', member.name);
    const target: ITarget = {
      broker: entry.url,
      backend: backend.name,
      member,
      owner
    };
    const kind = owner ? 'method' : 'function';
    const row: IRow = { key, kind, selection, expandable: false, target };
    const element = this._row(
      row,
      owner ? 3 : 2,
      false,
      [
        badge(kind),
        h(
          'span',
          {
            class: 'jp-DeMagic-label jp-DeMagic-name',
            title: member.summary ?? ''
          },
          highlighted(member.name, highlight)
        ),
        h(
          'span',
          {
            class: 'jp-DeMagic-signature',
            title: `${member.name}${member.signature}`
          },
          member.signature
        )
      ],
      [
        this._button(
          addBelowIcon,
          'Insert call into the notebook',
          'insert-call'
        )
      ]
    );
    element.dataset.member = member.name;
    return this._item(element, null, []);
  }

  private _onClick(event: MouseEvent): void {
    const target = event.target as HTMLElement;
    const button = target.closest('[data-action]') as HTMLElement | null;
    const rowElement = target.closest('.jp-DeMagic-row') as HTMLElement | null;
    const row = rowElement ? this._rows.get(rowElement) : undefined;
    if (button) {
      event.stopPropagation();
      const action = button.dataset.action;
      const broker = button.dataset.broker ?? rowElement?.dataset.broker;
      if (action === 'refresh' && broker) {
        void this.model.broker(broker)?.poll.refresh();
      } else if (action === 'remove' && broker) {
        this._actions.removeBroker(broker);
      } else if (action === 'add-key' && broker) {
        this._actions.addBrokerKey(broker);
      } else if (action === 'insert-call' && row?.target) {
        this.select(row.selection);
        this._actions.insertCall(row.target);
      }
      return;
    }
    if (!row) {
      return;
    }
    // The twisty opens and closes a row; elsewhere a click selects it, and only a row that
    // cannot be selected (a broker) opens or closes.
    const onCaret = !!target.closest('.jp-DeMagic-caret');
    if (row.expandable && (onCaret || !row.selection)) {
      this._toggle(row.key);
    }
    if (row.selection && !onCaret) {
      this.select(row.selection);
    }
    this._list.focus();
  }

  private _onKeyDown(event: KeyboardEvent): void {
    const rows = Array.from(
      this._list.querySelectorAll<HTMLElement>('.jp-DeMagic-row')
    );
    const index = rows.findIndex(r => r.classList.contains('jp-mod-selected'));
    const current = index >= 0 ? this._rows.get(rows[index]) : undefined;
    const move = (delta: number) => {
      for (let i = index + delta; i >= 0 && i < rows.length; i += delta) {
        const row = this._rows.get(rows[i]);
        if (row?.selection) {
          this.select(row.selection);
          this._list
            .querySelector('.jp-mod-selected')
            ?.scrollIntoView({ block: 'nearest' });
          return;
        }
      }
    };
    switch (event.key) {
      case 'ArrowDown':
        move(1);
        break;
      case 'ArrowUp':
        move(-1);
        break;
      case 'ArrowRight':
      case 'ArrowLeft': {
        if (current?.expandable) {
          const open =
            rows[index].parentElement?.getAttribute('aria-expanded') === 'true';
          if (open === (event.key === 'ArrowLeft')) {
            this._toggle(current.key);
          }
        }
        break;
      }
      case 'Enter':
        if (current?.target) {
          this._actions.insertCall(current.target);
        } else if (current?.expandable) {
          this._toggle(current.key);
        }
        break;
      default:
        return;
    }
    event.preventDefault();
  }

  private _actions: ITreeActions;
  private _filter: HTMLInputElement;
  private _list: HTMLUListElement;
  private _rows = new Map<HTMLElement, IRow>();
  private _selection: ISelection | null = null;
  private _selectionChanged = new Signal<this, ISelection | null>(this);
  private _countdown: number | null = null;
  /** Rows opened or closed by the user, relative to their default state. */
  private _toggled = new Set<string>();
}
