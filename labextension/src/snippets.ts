/**
 * The notebook cells the panel inserts: a call of a remote method, a %%remote cell, a form.
 *
 * Parameters with a default are filled with it (`default_repr`, a Python literal); a required
 * one is passed a variable of its own name (`values=values`) with a comment naming what is
 * expected: the user fills it in, or defines the variable, and running it unfilled stops at
 * once with "NameError: name 'values' is not defined" rather than sending a wrong value
 * (`None` always fails remotely, `...` would silently pass an Ellipsis).
 */
import { IMember, IParameter } from './api';

/** What a snippet is about: a function, or a method of a class, of one backend. */
export interface ITarget {
  broker: string;
  backend: string;
  member: IMember;
  /** The class, when `member` is one of its methods. */
  owner?: IMember;
}

/** Lines longer than this are split one argument per line (black's default). */
const MAX_LINE = 88;
const INDENT = '    ';

/** A Python string literal (JSON's escapes are valid Python for these strings). */
export function pyString(text: string): string {
  return JSON.stringify(text);
}

interface IArgument {
  text: string;
  todo: string | null;
}

function argumentsOf(params: IParameter[] | undefined): IArgument[] {
  const args: IArgument[] = [];
  for (const p of params ?? []) {
    // *args and **kwargs are optional by nature: leave them out.
    if (p.kind === 'VAR_POSITIONAL' || p.kind === 'VAR_KEYWORD') {
      continue;
    }
    const hasDefault = !p.required && p.default_repr !== null;
    const value = hasDefault ? (p.default_repr as string) : p.name;
    const text = p.kind === 'POSITIONAL_ONLY' ? value : `${p.name}=${value}`;
    const todo = hasDefault
      ? null
      : `TODO: required${p.annotation ? `, ${p.annotation}` : ''}`;
    args.push({ text, todo });
  }
  return args;
}

/** `callee(args)` on one line when it fits and needs no TODO comment, else one argument per line. */
export function formatCall(
  prefix: string,
  callee: string,
  params: IParameter[] | undefined
): string {
  const args = argumentsOf(params);
  const inline = `${prefix}${callee}(${args.map(a => a.text).join(', ')})`;
  if (args.every(a => a.todo === null) && inline.length <= MAX_LINE) {
    return inline;
  }
  const lines = args.map(
    a => `${INDENT}${a.text},${a.todo ? `  # ${a.todo}` : ''}`
  );
  return `${prefix}${callee}(\n${lines.join('\n')}\n)`;
}

/** The variable the inserted calls use for a broker's client, unless the notebook has one. */
const CLIENT_NAME = 'client';
const IMPORT_CLIENT = 'from de_magic import Client';

/** A variable name for an instance of class `name`, none of the `taken` ones. */
function instanceName(name: string, taken: string[]): string {
  const snake = name
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2')
    .toLowerCase();
  return taken.includes(snake) ? 'instance' : snake;
}

/**
 * How a cell reaches `broker`: the variable already bound to `Client("broker", …)` in one of
 * the notebook's cells `sources`, else a new one (`client`, or `client_2`… when `client` is
 * taken by another broker) with the lines that make it.
 */
export function clientFor(
  broker: string,
  sources: string[]
): { name: string; setup: string[] } {
  const assigned = new Map<string, string>();
  const pattern =
    /^\s*([A-Za-z_]\w*)\s*=\s*Client\(\s*(?:url\s*=\s*)?(['"])(.*?)\2/;
  const lines = sources.flatMap(source => source.split('\n'));
  for (const line of lines) {
    const match = pattern.exec(line);
    if (match) {
      assigned.set(match[1], match[3]);
    }
  }
  for (const [name, url] of assigned) {
    if (url === broker) {
      return { name, setup: [] };
    }
  }
  let name = CLIENT_NAME;
  for (let i = 2; assigned.has(name); i++) {
    name = `${CLIENT_NAME}_${i}`;
  }
  const imported = lines.some(line => line.trim() === IMPORT_CLIENT);
  const make = `${name} = Client(${pyString(broker)})`;
  return { name, setup: imported ? [make] : [IMPORT_CLIENT, '', make] };
}

/**
 * A ready-to-run cell calling the target through the notebook's client for its broker (made
 * first when the notebook's cells `sources` have none):
 *
 *     from de_magic import Client
 *
 *     client = Client("tcp://…")
 *     result = client["name"].method(a=1, b=2)
 *     result
 */
export function callSnippet(target: ITarget, sources: string[] = []): string {
  const client = clientFor(target.broker, sources);
  const handle = `${client.name}[${pyString(target.backend)}]`;
  const { member, owner } = target;
  let body: string;
  if (!owner) {
    body = formatCall(
      'result = ',
      `${handle}.${member.name}`,
      member.parameters
    );
  } else {
    const ctor = formatCall('', `${handle}.${owner.name}`, owner.parameters);
    const chained = formatCall(
      'result = ',
      `${ctor}.${member.name}`,
      member.parameters
    );
    if (!ctor.includes('\n') && !chained.includes('\n')) {
      body = chained;
    } else {
      // Too long for one line: name the instance, then call the method on it.
      const instance = instanceName(owner.name, ['result', client.name]);
      body =
        `${instance} = ${ctor}\n` +
        formatCall(
          'result = ',
          `${instance}.${member.name}`,
          member.parameters
        );
    }
  }
  return [...client.setup, body, 'result'].join('\n');
}

/** The dotted name the magics use for a target: `backend.function` or `backend.Class.method`. */
export function dottedName(target: ITarget): string {
  const parts = [target.backend];
  if (target.owner) {
    parts.push(target.owner.name);
  }
  parts.push(target.member.name);
  return parts.join('.');
}

/** The line that loads the magics. */
export const LOAD_EXT = '%load_ext de_magic';

/**
 * What a notebook needs before it uses the magics on `broker`: loading them and, unless it is
 * the default broker (the kernel's DE_MAGIC_BROKER, inherited from the server), connecting.
 */
export function magicsSetup(
  broker: string,
  isDefaultBroker: boolean
): string[] {
  return isDefaultBroker ? [LOAD_EXT] : [LOAD_EXT, `%remote_connect ${broker}`];
}

/** The setup lines that no cell of the notebook has yet. */
export function missingSetup(setup: string[], sources: string[]): string[] {
  const lines = new Set(
    sources.flatMap(source => source.split('\n').map(line => line.trim()))
  );
  if (lines.has('%reload_ext de_magic')) {
    lines.add(LOAD_EXT);
  }
  return setup.filter(line => !lines.has(line));
}

/**
 * A `%%remote` cell (only for backends that accept code): its body runs on the backend, and
 * starts with a line that shows where.
 */
export function remoteCellSnippet(backend: string): string {
  return [
    `%%remote ${backend}`,
    `# This cell runs on the backend ${pyString(backend)}, not in this kernel.`,
    'import os, socket',
    'print(f"running on {socket.gethostname()}, pid {os.getpid()}")'
  ].join('\n');
}

/**
 * A cell that shows a `%%remote --noblock` job's output (live while it runs, what it printed before
 * first) and pulls its `--pull` variables into the notebook: the `%remote_result` magic.
 */
export function remoteResultSnippet(id: string): string {
  return `%remote_result ${id}`;
}

/** A form to call the target, built from its signature by the `%remote_ui` magic. */
export function formSnippet(target: ITarget): string {
  return `%remote_ui ${dottedName(target)}`;
}

/**
 * A cell that fetches the result of the job `id` through the notebook's client for `broker`:
 *
 *     result = client.job("backend:worker:token").result()
 *     result
 */
export function fetchSnippet(
  broker: string,
  id: string,
  sources: string[] = []
): string {
  const client = clientFor(broker, sources);
  return [
    ...client.setup,
    `result = ${client.name}.job(${pyString(id)}).result()`,
    'result'
  ].join('\n');
}
