/**
 * A member's route on the HTTP gateway and a curl line that calls it (docs/gateway.md).
 */
import { IGateway, IMember, IParameter } from './api';

/** The route of `member` (a function, or with `owner` a class's method) of `backend`. */
export function httpRoute(
  gateway: IGateway,
  backend: string,
  member: IMember,
  owner?: IMember
): string {
  const path = [backend, ...(owner ? [owner.name] : []), member.name]
    .map(encodeURIComponent)
    .join('/');
  return `${gateway.url.replace(/\/+$/, '')}/backends/${path}`;
}

/** A value of the annotation's type to fill in, for a required argument of the example body. */
function placeholder(param: IParameter): unknown {
  const type = (param.annotation ?? '').replace(/^typing\./, '');
  if (/^(list|tuple|set|Sequence)\b/.test(type)) {
    return [];
  }
  if (/^(dict|Mapping)\b/.test(type)) {
    return {};
  }
  if (type === 'int' || type === 'float') {
    return 0;
  }
  if (type === 'str') {
    return '';
  }
  if (type === 'bool') {
    return false;
  }
  return null;
}

/** The required arguments by name, each with a placeholder of its type. */
function exampleArguments(params: IParameter[] = []): Record<string, unknown> {
  const args: Record<string, unknown> = {};
  for (const p of params) {
    if (p.required && p.kind !== 'VAR_POSITIONAL' && p.kind !== 'VAR_KEYWORD') {
      args[p.name] = placeholder(p);
    }
  }
  return args;
}

/** `text` as one shell word in single quotes. */
export function shellQuote(text: string): string {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

/** A curl line calling the member through the gateway with its required arguments filled in. */
export function curlLine(
  gateway: IGateway,
  backend: string,
  member: IMember,
  owner?: IMember
): string {
  const body = owner
    ? {
        init: exampleArguments(owner.parameters),
        args: exampleArguments(member.parameters)
      }
    : exampleArguments(member.parameters);
  const auth = gateway.tokens
    ? ' -H "Authorization: Bearer $DE_MAGIC_TOKEN"'
    : '';
  return (
    `curl -s -X POST ${shellQuote(httpRoute(gateway, backend, member, owner))}` +
    `${auth} -H 'Content-Type: application/json' -d ${shellQuote(JSON.stringify(body))}`
  );
}
