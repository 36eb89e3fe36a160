/**
 * The notebook cells the panel inserts: a call of a remote method, a %%remote cell, a form.
 *
 * Parameters with a default are filled with it (`default_repr`, a Python literal); required
 * ones get `None` and a `# TODO` comment naming what is expected, so the cell runs as soon as
 * the TODOs are filled, and is plainly unfinished before that (`...` would silently pass an
 * Ellipsis to the backend).
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
    const value = hasDefault ? (p.default_repr as string) : 'None';
    const text = p.kind === 'POSITIONAL_ONLY' ? value : `${p.name}=${value}`;
    let todo: string | null = null;
    if (!hasDefault) {
      const what = p.annotation ? `${p.name}: ${p.annotation}` : p.name;
      todo = `TODO: ${what} (required)`;
    }
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

function snakeCase(name: string): string {
  const snake = name
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2')
    .toLowerCase();
  // `result` is the snippet's other variable.
  return snake === 'result' ? 'instance' : snake;
}

/** The handle on a backend: `Client("URL")["NAME"]`. */
export function backendExpression(broker: string, backend: string): string {
  return `Client(${pyString(broker)})[${pyString(backend)}]`;
}

/**
 * A ready-to-run cell calling the target:
 *
 *     from de_magic import Client
 *
 *     result = Client("tcp://…")["name"].method(a=1, b=2)
 *     result
 */
export function callSnippet(target: ITarget): string {
  const handle = backendExpression(target.broker, target.backend);
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
      const instance = snakeCase(owner.name);
      body =
        `${instance} = ${ctor}\n` +
        formatCall(
          'result = ',
          `${instance}.${member.name}`,
          member.parameters
        );
    }
  }
  return `from de_magic import Client\n\n${body}\nresult`;
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

/** A form to call the target, built from its signature by the `%remote_ui` magic. */
export function formSnippet(target: ITarget): string {
  return `%remote_ui ${dottedName(target)}`;
}
