import { IDocSection, inline, renderDocstring } from '../src/docstring';

const tabled = new Set(['parameters', 'returns']);

function headings(element: HTMLElement | null): string[] {
  return Array.from(element!.querySelectorAll('h4')).map(h => h.textContent!);
}

// Sections as de_magic/schema/docstrings.py's doc_sections gives them in the API description.
const examples: IDocSection[] = [
  { title: null, kind: null, text: 'Add up ``values``.' },
  {
    title: 'Parameters',
    kind: 'parameters',
    text: 'values : list\n    the numbers'
  },
  { title: 'Yields', kind: 'returns', text: 'int\n    the next number' },
  { title: 'Examples', kind: null, text: '>>> add([1, 2])\n3' }
];

describe('renderDocstring', () => {
  it('renders paragraphs, headings and literal blocks', () => {
    const element = renderDocstring(examples, null)!;
    expect(element.querySelector('p code')!.textContent).toBe('values');
    expect(headings(element)).toEqual(['Parameters', 'Yields', 'Examples']);
    const literals = Array.from(element.querySelectorAll('pre'));
    expect(literals.map(pre => pre.textContent)).toContain(
      '>>> add([1, 2])\n3'
    );
  });

  it('leaves out the sections the panel shows as tables, by their kind', () => {
    const element = renderDocstring(examples, null, tabled)!;
    expect(headings(element)).toEqual(['Examples']);
    expect(element.textContent).not.toContain('the next number');
    expect(element.textContent).toContain('Add up');
  });

  it('shows the docstring of a description without sections as it is', () => {
    const element = renderDocstring(undefined, 'Plain text.\n\n>>> 1 + 1')!;
    expect(headings(element)).toEqual([]);
    expect(element.querySelector('p')!.textContent).toBe('Plain text.');
    expect(element.querySelector('pre')!.textContent).toBe('>>> 1 + 1');
  });

  it('renders nothing when nothing is left', () => {
    expect(renderDocstring([], null)).toBeNull();
    expect(renderDocstring(undefined, '')).toBeNull();
  });
});

describe('inline', () => {
  it('turns ``code`` and `code` into <code>, the rest into text', () => {
    const holder = document.createElement('p');
    holder.append(...inline('a ``b`` c `d` <e>'));
    expect(holder.innerHTML).toBe(
      'a <code>b</code> c <code>d</code> &lt;e&gt;'
    );
  });
});
