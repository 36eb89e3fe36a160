/**
 * Docstrings as readable text: paragraphs, numpy/Google section headings, literal blocks and
 * ``code``. Sections the panel already shows as tables (parameters, returns) are left out.
 */
import { h } from './dom';

// The parameter and return headings are those de_magic/schema.py's parse_docstring reads
// (the API's parameter docs and `returns.doc` come from there): keep the two in step.
const GOOGLE_HEADING =
  /^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters|Returns?|Yields?|Raises|Examples?|Notes?|Attributes|See Also|References|Warnings?|Todo):\s*$/i;
const UNDERLINE = /^\s*(-{3,}|={3,})\s*$/;

/** Docstring sections describing parameters; shown as a table instead. */
export const PARAMETER_SECTIONS = [
  'parameters',
  'params',
  'args',
  'arguments',
  'keyword args',
  'keyword arguments',
  'other parameters'
];

/** Docstring sections describing the return value: a generator's yields are its result. */
export const RETURN_SECTIONS = ['returns', 'return', 'yields', 'yield'];

interface ISection {
  title: string | null;
  lines: string[];
}

function sections(doc: string): ISection[] {
  const lines = doc.replace(/\t/g, '    ').split('\n');
  const result: ISection[] = [{ title: null, lines: [] }];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const next = lines[i + 1];
    if (
      line.trim() &&
      next !== undefined &&
      UNDERLINE.test(next) &&
      !/^\s/.test(line)
    ) {
      result.push({ title: line.trim(), lines: [] });
      i++;
    } else if (GOOGLE_HEADING.test(line)) {
      result.push({ title: line.trim().replace(/:$/, ''), lines: [] });
    } else {
      result[result.length - 1].lines.push(line);
    }
  }
  return result;
}

/** Text with ``code`` and `code` spans as <code>. */
export function inline(text: string): Node[] {
  const nodes: Node[] = [];
  const pattern = /``([^`]+)``|`([^`]+)`/g;
  let last = 0;
  for (let match = pattern.exec(text); match; match = pattern.exec(text)) {
    nodes.push(document.createTextNode(text.slice(last, match.index)));
    nodes.push(h('code', {}, match[1] ?? match[2]));
    last = match.index + match[0].length;
  }
  nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

function dedent(lines: string[]): string[] {
  const indents = lines
    .filter(l => l.trim())
    .map(l => l.length - l.trimStart().length);
  const cut = indents.length ? Math.min(...indents) : 0;
  return lines.map(l => l.slice(cut));
}

function blocks(lines: string[]): Node[] {
  const nodes: Node[] = [];
  let block: string[] = [];
  const flush = () => {
    if (block.length) {
      const text = dedent(block);
      // Plain prose becomes a paragraph; anything with structure (indents, >>>) stays as it is.
      const prose = text.every(l => !/^\s/.test(l) && !l.startsWith('>>>'));
      nodes.push(
        prose
          ? h('p', {}, ...inline(text.join(' ')))
          : h('pre', {}, text.join('\n'))
      );
    }
    block = [];
  };
  for (const line of lines) {
    if (line.trim()) {
      block.push(line);
    } else {
      flush();
    }
  }
  flush();
  return nodes;
}

export function renderDocstring(
  doc: string,
  skip: Set<string> = new Set()
): HTMLElement {
  const element = h('div', { class: 'jp-DeMagic-doc' });
  for (const section of sections(doc.trim())) {
    if (section.title && skip.has(section.title.toLowerCase())) {
      continue;
    }
    const body = blocks(section.lines);
    if (section.title && body.length) {
      element.append(h('h4', {}, section.title));
    }
    element.append(...body);
  }
  return element;
}
