/**
 * The brokers the panel shows and what each one offers, kept fresh by one poll per broker.
 *
 * One poll per broker (rather than one for all) so that a dead broker backs off on its own
 * while the live ones keep refreshing at the normal pace.
 */
import { JSONExt } from '@lumino/coreutils';
import { IDisposable } from '@lumino/disposable';
import { IPoll, Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { IBackend, IListing, IMember, fetchListing } from './api';

/** Where a broker in the list comes from: the user's settings can remove only their own. */
export type BrokerOrigin = 'default' | 'server' | 'user';

export class BrokerEntry implements IDisposable {
  constructor(
    readonly url: string,
    public origin: BrokerOrigin,
    private _owner: BrokersModel
  ) {
    this.poll = new Poll({
      factory: () => this._fetch(),
      frequency: _owner.frequency,
      name: `de-magic:${url}`,
      standby: () => _owner.standby()
    });
    // The time of the next try is known only once the poll has scheduled it.
    this.poll.ticked.connect(() => this.error !== null && _owner.notify());
  }

  readonly poll: Poll;
  /** The last answer of a reachable broker; null before it first answers or while it is down. */
  listing: IListing | null = null;
  /** Why the broker cannot be shown, e.g. it does not answer. */
  error: string | null = null;
  /** The broker refuses us because its public key is not known yet: the panel offers to add it. */
  needsKey = false;
  /** True until the first answer (or failure). */
  loading = true;
  /** Failed tries in a row. */
  failures = 0;
  /** True while the broker is asked again after a failure. */
  retrying = false;

  /** When (ms since the epoch) a broker that failed is tried again, if a try is scheduled. */
  get nextTry(): number | null {
    const state = this.poll.state;
    return this.error !== null && state.phase === 'rejected'
      ? state.timestamp + state.interval
      : null;
  }

  get isDisposed(): boolean {
    return this.poll.isDisposed;
  }

  get backends(): IBackend[] {
    const backends = this.listing?.backends ?? {};
    return Object.keys(backends)
      .sort()
      .map(name => backends[name]);
  }

  dispose(): void {
    this.poll.dispose();
  }

  private async _fetch(): Promise<void> {
    if (this.error !== null) {
      this.retrying = true;
      this._owner.notify();
    }
    let listing: IListing;
    try {
      listing = await fetchListing(this.url);
    } catch (reason) {
      this._fail(
        `The Jupyter server did not answer: ${(reason as Error).message}`
      );
      throw reason;
    }
    this.needsKey = !!listing.needs_key;
    if (!listing.reachable) {
      const message =
        listing.error || `The broker at ${this.url} does not answer.`;
      this._fail(message);
      // Rejecting makes the poll back off until the broker comes back.
      throw new Error(message);
    }
    const changed =
      this.loading ||
      this.error !== null ||
      !JSONExt.deepEqual(
        (this.listing?.backends ?? null) as any,
        (listing.backends ?? null) as any
      );
    this.loading = false;
    this.error = null;
    this.failures = 0;
    this.retrying = false;
    this.listing = listing;
    if (changed) {
      this._owner.notify();
    }
  }

  private _fail(message: string): void {
    const changed =
      this.loading ||
      this.retrying ||
      this.error !== message ||
      this.listing !== null;
    this.failures++;
    this.retrying = false;
    this.loading = false;
    this.error = message;
    this.listing = null;
    if (changed) {
      this._owner.notify();
    }
  }
}

/** What is selected in the tree: a backend, a class, a function, or a method of a class. */
export interface ISelection {
  broker: string;
  backend: string;
  /** The class name, when a method or the class itself is selected. */
  owner?: string;
  /** The function or method name; absent when a backend or a class is selected. */
  member?: string;
}

export class BrokersModel implements IDisposable {
  constructor(options: { standby: () => boolean }) {
    this.standby = options.standby;
  }

  readonly standby: () => boolean;

  /** Why the list of brokers could not be had from the server extension, if it could not. */
  get serverError(): string | null {
    return this._serverError;
  }

  set serverError(value: string | null) {
    if (value !== this._serverError) {
      this._serverError = value;
      this.notify();
    }
  }
  frequency: IPoll.Frequency = { interval: 5000, backoff: true, max: 10000 };
  defaultBroker: string | null = null;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  get brokers(): BrokerEntry[] {
    return Array.from(this._brokers.values());
  }

  broker(url: string): BrokerEntry | undefined {
    return this._brokers.get(url);
  }

  /** Show exactly these brokers (the default one first), keeping the state of those already shown. */
  setBrokers(
    defaultBroker: string | null,
    server: string[],
    user: string[]
  ): void {
    this.defaultBroker = defaultBroker;
    const wanted = new Map<string, BrokerOrigin>();
    if (defaultBroker) {
      wanted.set(defaultBroker, 'default');
    }
    for (const url of server) {
      if (!wanted.has(url)) {
        wanted.set(url, 'server');
      }
    }
    for (const url of user) {
      if (!wanted.has(url)) {
        wanted.set(url, 'user');
      }
    }
    const next = new Map<string, BrokerEntry>();
    for (const [url, origin] of wanted) {
      let entry = this._brokers.get(url);
      if (entry) {
        entry.origin = origin;
      } else {
        entry = new BrokerEntry(url, origin, this);
      }
      next.set(url, entry);
    }
    for (const [url, entry] of this._brokers) {
      if (!next.has(url)) {
        entry.dispose();
      }
    }
    this._brokers = next;
    this.notify();
  }

  setFrequency(frequency: IPoll.Frequency): void {
    this.frequency = frequency;
    for (const entry of this._brokers.values()) {
      entry.poll.frequency = frequency;
    }
  }

  /** Ask every broker now (e.g. when the panel is shown again, or on the refresh button). */
  async refresh(): Promise<void> {
    await Promise.all(this.brokers.map(entry => entry.poll.refresh()));
  }

  /** The selected function, method or class, or null if it is no longer offered. */
  resolve(selection: ISelection | null): {
    entry: BrokerEntry;
    backend: IBackend;
    owner?: IMember;
    member?: IMember;
  } | null {
    if (!selection) {
      return null;
    }
    const entry = this._brokers.get(selection.broker);
    const backend = entry?.listing?.backends?.[selection.backend];
    if (!entry || !backend) {
      return null;
    }
    const members = backend.api?.members ?? {};
    if (selection.owner) {
      const owner = members[selection.owner];
      if (!owner) {
        return null;
      }
      if (!selection.member) {
        return { entry, backend, member: owner };
      }
      const member = owner.methods?.[selection.member];
      return member ? { entry, backend, owner, member } : null;
    }
    if (selection.member) {
      const member = members[selection.member];
      return member ? { entry, backend, member } : null;
    }
    return { entry, backend };
  }

  notify(): void {
    if (!this._isDisposed) {
      this._changed.emit();
    }
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    for (const entry of this._brokers.values()) {
      entry.dispose();
    }
    this._brokers.clear();
    Signal.clearData(this);
  }

  private _brokers = new Map<string, BrokerEntry>();
  private _changed = new Signal<this, void>(this);
  private _isDisposed = false;
  private _serverError: string | null = null;
}
