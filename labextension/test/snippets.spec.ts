import { IMember, IParameter } from '../src/api';
import {
  callSnippet,
  clientFor,
  fetchSnippet,
  remoteResultSnippet,
  formatCall,
  magicsSetup,
  missingSetup
} from '../src/snippets';

const URL = 'tcp://127.0.0.1:5555';

function param(name: string, extra: Partial<IParameter> = {}): IParameter {
  return {
    name,
    kind: 'POSITIONAL_OR_KEYWORD',
    annotation: null,
    required: false,
    default_repr: null,
    doc: null,
    ...extra
  };
}

const slowSum: IMember = {
  name: 'slow_sum',
  kind: 'function',
  signature: '(n: int = 20, delay: float = 0.05) -> int',
  parameters: [
    param('n', { default_repr: '20' }),
    param('delay', { default_repr: '0.05' })
  ]
};

describe('formatCall', () => {
  it('puts defaults inline when they fit', () => {
    expect(formatCall('result = ', 'f', slowSum.parameters)).toBe(
      'result = f(n=20, delay=0.05)'
    );
  });

  it('passes a required parameter a variable of its name, with a TODO', () => {
    const params = [
      param('values', { required: true, annotation: 'list[float]' }),
      param('x', { required: true, kind: 'POSITIONAL_ONLY' }),
      param('args', { kind: 'VAR_POSITIONAL' })
    ];
    expect(formatCall('', 'f', params)).toBe(
      [
        'f(',
        '    values=values,  # TODO: required, list[float]',
        '    x,  # TODO: required',
        ')'
      ].join('\n')
    );
  });
});

describe('clientFor', () => {
  it('makes a client (and imports Client) in a notebook without one', () => {
    expect(clientFor(URL, ['import numpy as np'])).toEqual({
      name: 'client',
      setup: ['from de_magic import Client', '', `client = Client("${URL}")`]
    });
  });

  it("reuses the notebook's client for the broker, whatever its name", () => {
    const sources = [
      'from de_magic import Client',
      `remote = Client('${URL}', timeout=5)`
    ];
    expect(clientFor(URL, sources)).toEqual({ name: 'remote', setup: [] });
  });

  it('picks another name when `client` is bound to another broker', () => {
    const sources = [
      'from de_magic import Client\nclient = Client("tcp://other:5555")'
    ];
    expect(clientFor(URL, sources)).toEqual({
      name: 'client_2',
      setup: [`client_2 = Client("${URL}")`]
    });
  });
});

describe('callSnippet', () => {
  const target = { broker: URL, backend: 'hello_world', member: slowSum };

  it('builds a client, calls and shows the result', () => {
    expect(callSnippet(target)).toBe(
      [
        'from de_magic import Client',
        '',
        `client = Client("${URL}")`,
        'result = client["hello_world"].slow_sum(n=20, delay=0.05)',
        'result'
      ].join('\n')
    );
  });

  it('refers to the client a cell already made', () => {
    const sources = [`from de_magic import Client\nclient = Client("${URL}")`];
    expect(callSnippet(target, sources)).toBe(
      'result = client["hello_world"].slow_sum(n=20, delay=0.05)\nresult'
    );
  });

  it('names the instance when the method call takes more than a line', () => {
    const std: IMember = {
      name: 'std',
      kind: 'method',
      signature: '(values: list[float]) -> float',
      parameters: [param('values', { required: true })]
    };
    const stats: IMember = {
      name: 'Stats',
      kind: 'class',
      signature: '(ddof: int = 0)',
      parameters: [param('ddof', { default_repr: '0' })]
    };
    const code = callSnippet(
      { broker: URL, backend: 'hello_world', member: std, owner: stats },
      [`client = Client("${URL}")`]
    );
    expect(code).toBe(
      [
        'stats = client["hello_world"].Stats(ddof=0)',
        'result = stats.std(',
        '    values=values,  # TODO: required',
        ')',
        'result'
      ].join('\n')
    );
  });
});

describe('callSnippet variable names', () => {
  it('does not name an instance after the client it is made with', () => {
    const method: IMember = {
      name: 'ping',
      kind: 'method',
      signature: '(host: str)',
      parameters: [param('host', { required: true })]
    };
    const owner: IMember = { name: 'Client', kind: 'class', signature: '()' };
    const code = callSnippet(
      { broker: URL, backend: 'net', member: method, owner },
      [`client = Client("${URL}")`]
    );
    expect(code.split('\n')[0]).toBe('instance = client["net"].Client()');
  });
});

describe('magics setup', () => {
  it('connects to brokers other than the default', () => {
    expect(magicsSetup(URL, true)).toEqual(['%load_ext de_magic']);
    expect(magicsSetup(URL, false)).toEqual([
      '%load_ext de_magic',
      `%remote_connect ${URL}`
    ]);
  });

  it('leaves out what the notebook has, %reload_ext included', () => {
    const setup = magicsSetup(URL, false);
    expect(missingSetup(setup, ['%reload_ext de_magic'])).toEqual([
      `%remote_connect ${URL}`
    ]);
    expect(missingSetup(setup, [])).toEqual(setup);
  });
});

describe('remoteResultSnippet', () => {
  it("shows a %%remote job's output and pulls its variables", () => {
    expect(remoteResultSnippet('hello_world:ab12:cd34')).toBe(
      '%remote_result hello_world:ab12:cd34'
    );
  });
});

describe('fetchSnippet', () => {
  it('fetches a job through the notebook client of its broker', () => {
    const sources = [`from de_magic import Client\nclient = Client("${URL}")`];
    expect(fetchSnippet(URL, 'hello_world:ab12:cd34', sources)).toBe(
      'result = client.job("hello_world:ab12:cd34").result()\nresult'
    );
  });

  it('makes a client when the notebook has none', () => {
    expect(fetchSnippet(URL, 'b:w:t')).toBe(
      `from de_magic import Client\n\nclient = Client("${URL}")\n` +
        'result = client.job("b:w:t").result()\nresult'
    );
  });
});
