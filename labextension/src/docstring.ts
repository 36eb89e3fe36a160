/**
 * Docstrings as readable text: paragraphs, literal blocks and ``code``, section by section as the
 * backend's API description gives them (de_magic/schema/docstrings.py parses them, once, for every
 * client). Sections the panel already shows as tables (parameters, returns) are left out.
 */
import { h } from './dom';

/** One section of a docstring; `title` is null for the text before the first heading. */
export interface IDocSection {
  title: string | null;
  /** "parameters" or "returns" for the sections the panel shows as tables. */
  kind: 'parameters' | 'returns' | null;
  text: string;
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

/**
 * The sections as HTML, leaving out those of a `skip` kind; a description without sections (an
 * older backend) has its docstring shown as one untitled section.
 */
export function renderDocstring(
  sections: IDocSection[] | undefined,
  doc: string | null | undefined,
  skip: Set<string> = new Set()
): HTMLElement | null {
  const shown = (sections ?? [{ title: null, kind: null, text: doc ?? '' }])
    .filter(section => !(section.kind && skip.has(section.kind)))
    .map(section => ({ section, body: blocks(section.text.split('\n')) }))
    .filter(({ body }) => body.length);
  if (!shown.length) {
    return null;
  }
  const element = h('div', { class: 'jp-DeMagic-doc' });
  for (const { section, body } of shown) {
    if (section.title) {
      element.append(h('h4', {}, section.title));
    }
    element.append(...body);
  }
  return element;
}
