/**
 * Talking to the server extension (de_magic/lab/server.py) and the shapes it answers with.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IDocSection } from './docstring';

/** One parameter of a function, method or class constructor. */
export interface IParameter {
  name: string;
  kind:
    | 'POSITIONAL_ONLY'
    | 'POSITIONAL_OR_KEYWORD'
    | 'VAR_POSITIONAL'
    | 'KEYWORD_ONLY'
    | 'VAR_KEYWORD';
  annotation: string | null;
  required: boolean;
  default_repr: string | null;
  doc: string | null;
}

/** A function, a class, or a method of a class, as the backend describes it. */
export interface IMember {
  name: string;
  kind: 'function' | 'class' | 'method' | string;
  signature: string;
  summary?: string | null;
  doc?: string | null;
  sections?: IDocSection[];
  parameters?: IParameter[];
  returns?: { annotation?: string | null; doc?: string | null } | null;
  methods?: { [name: string]: IMember };
}

/** The Dask cluster a backend runs its calls on (docs/scale.md). */
export interface IDask {
  scheduler: string;
  dashboard?: string;
  workers: number;
  threads: number;
}

/** What a worker's `%%remote` sessions hold: each one's start and memory, the largest first (owner-neutral). */
export interface ISessions {
  count: number;
  bytes: number;
  each: { since: number; bytes: number }[];
}

/** What a worker keeps for remote references (`options(keep=True)`). */
export interface IRefs {
  count: number;
  bytes: number;
}

export interface IWorker {
  id: string;
  pid?: number;
  host?: string;
  since?: number;
  capacity?: number;
  busy?: number;
  calls?: number;
  dask?: IDask;
  sessions?: ISessions;
  refs?: IRefs;
  /** Where it takes direct calls, and its public key as the broker authenticated it (null without CURVE). */
  direct?: { url: string; key: string | null };
}

/** A launch command the broker ran for a backend whose jobs wait (docs/scale.md), until a worker registers. */
export interface ILaunch {
  pending: boolean;
  since: number;
  command: string;
  /** Why the command could not be run. */
  error?: string;
}

export interface IBackend {
  name: string;
  allow_code: boolean;
  since?: number;
  workers: IWorker[];
  /** Since when no worker of it is up: a broker with a state directory lists the backends it served. */
  offline?: number | null;
  /** Jobs waiting at the broker for a worker of it (docs/jobs.md). */
  waiting?: number;
  launch?: ILaunch;
  api?: {
    name: string;
    doc?: string | null;
    sections?: IDocSection[];
    members: { [name: string]: IMember };
  };
}

/** Where the config file's HTTP gateway serves a broker's backends (docs/gateway.md). */
export interface IGateway {
  url: string;
  /** Whether the gateway wants a bearer token. */
  tokens: boolean;
}

/** The answer of `GET de-magic/listing?broker=URL`. */
export interface IListing {
  reachable: boolean;
  /** Why the broker could not be queried, when `reachable` is false. */
  error?: string;
  /** The broker uses CURVE and the server does not know its public key (it can be added). */
  needs_key?: boolean;
  broker?: { url: string; id?: string; since?: number; protocol?: string };
  backends?: { [name: string]: IBackend };
  latency_ms?: number;
  checked?: number;
  /** Set when a gateway serves this broker: the details then show HTTP routes and curl lines. */
  gateway?: IGateway | null;
}

export interface IBrokers {
  default: string;
  brokers: string[];
}

/** Call a de-magic REST endpoint; the token and XSRF header are handled by ServerConnection. */
export async function requestAPI<T>(
  endPoint: string,
  query: { [key: string]: string } = {},
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url =
    URLExt.join(settings.baseUrl, 'de-magic', endPoint) +
    URLExt.objectToQueryString(query);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = text;
  try {
    data = JSON.parse(text);
  } catch {
    // Not JSON (e.g. a proxy's HTML error page): keep the text for the message.
  }
  if (!response.ok) {
    throw new ServerConnection.ResponseError(response, data?.message ?? text);
  }
  return data as T;
}

export function fetchBrokers(): Promise<IBrokers> {
  return requestAPI<IBrokers>('brokers');
}

export function fetchListing(broker: string): Promise<IListing> {
  return requestAPI<IListing>('listing', { broker });
}

/** The latest report of a job's outermost progress loop. */
export interface IProgress {
  desc?: string | null;
  n: number;
  total?: number | null;
  unit?: string;
}

/** One of the user's jobs (docs/jobs.md), as `GET de-magic/jobs` lists it. */
export interface IJob {
  id: string;
  backend: string;
  what: string;
  status: string;
  created: number;
  finished?: number | null;
  progress?: IProgress | null;
  reason?: string;
}

/** The answer of `GET de-magic/jobs?broker=URL`. */
export interface IJobs {
  reachable: boolean;
  error?: string;
  jobs?: IJob[];
  /** Backends that did not answer. */
  silent?: string[];
}

export function fetchJobs(broker: string): Promise<IJobs> {
  return requestAPI<IJobs>('jobs', { broker });
}

/** What the server stored for a broker whose key the user gave. */
export interface ITrusted {
  url: string;
  public_key: string;
  config: string;
}

/**
 * Trust the broker at `url`: the server checks `key` (Z85 text or a key file's path) and
 * writes it into the broker's table of the de-magic config file, which kernels read too.
 */
export function trustBroker(url: string, key: string): Promise<ITrusted> {
  return requestAPI<ITrusted>(
    'brokers',
    {},
    { method: 'POST', body: JSON.stringify({ url, broker_key: key }) }
  );
}
