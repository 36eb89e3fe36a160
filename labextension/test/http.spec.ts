import { IMember, IParameter } from '../src/api';
import { curlLine, httpRoute, shellQuote } from '../src/http';

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

const scale: IMember = {
  name: 'scale',
  kind: 'function',
  signature: '(values: list[float], factor: float = 2.0)',
  parameters: [
    param('values', { annotation: 'list[float]', required: true }),
    param('factor', { annotation: 'float', default_repr: '2.0' })
  ]
};
const std: IMember = {
  name: 'std',
  kind: 'method',
  signature: '(values: list[float])',
  parameters: [param('values', { annotation: 'list[float]', required: true })]
};
const stats: IMember = {
  name: 'Stats',
  kind: 'class',
  signature: '(ddof: int = 0)',
  parameters: [param('ddof', { annotation: 'int', default_repr: '0' })],
  methods: { std }
};

describe('httpRoute', () => {
  it('joins the gateway, backend, member and method', () => {
    const gw = { url: 'http://127.0.0.1:8080/', tokens: false };
    expect(httpRoute(gw, 'hello_world', scale)).toBe(
      'http://127.0.0.1:8080/backends/hello_world/scale'
    );
    expect(httpRoute(gw, 'hello world', std, stats)).toBe(
      'http://127.0.0.1:8080/backends/hello%20world/Stats/std'
    );
  });
});

describe('curlLine', () => {
  it('fills in the required arguments, and a token header when one is needed', () => {
    const open = { url: 'http://127.0.0.1:8080', tokens: false };
    expect(curlLine(open, 'hello_world', scale)).toBe(
      "curl -s -X POST 'http://127.0.0.1:8080/backends/hello_world/scale' " +
        "-H 'Content-Type: application/json' -d '{\"values\":[]}'"
    );
    const guarded = { url: 'https://gw.example.org', tokens: true };
    const line = curlLine(guarded, 'hello_world', std, stats);
    expect(line).toContain('-H "Authorization: Bearer $DE_MAGIC_TOKEN"');
    expect(line).toContain('\'{"init":{},"args":{"values":[]}}\'');
  });

  it('quotes single quotes for the shell', () => {
    expect(shellQuote("it's")).toBe("'it'\\''s'");
  });
});
