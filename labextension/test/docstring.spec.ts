import {
  PARAMETER_SECTIONS,
  RETURN_SECTIONS,
  inline,
  renderDocstring
} from '../src/docstring';

const tabled = new Set([...PARAMETER_SECTIONS, ...RETURN_SECTIONS]);

function headings(element: HTMLElement): string[] {
  return Array.from(element.querySelectorAll('h4')).map(h => h.textContent!);
}

describe('renderDocstring', () => {
  it('renders paragraphs, numpydoc headings and literal blocks', () => {
    const doc = [
      'Add up ``values``.',
      '',
      'Examples',
      '--------',
      '>>> add([1, 2])',
      '3'
    ].join('\n');
    const element = renderDocstring(doc);
    expect(element.querySelector('p code')!.textContent).toBe('values');
    expect(headings(element)).toEqual(['Examples']);
    expect(element.querySelector('pre')!.textContent).toBe(
      '>>> add([1, 2])\n3'
    );
  });

  // de_magic/schema.py reads Yields as the return doc (shown in its own table): the
  // docstring must not show it a second time, in either style.
  it.each([
    [
      'Google',
      'Count up.\n\nYields:\n    int: the next number\n\nNote:\n    Slow.'
    ],
    ['numpydoc', 'Count up.\n\nYields\n------\nint\n    the next number']
  ])('leaves out a %s Yields section like Returns', (_, doc) => {
    const element = renderDocstring(doc, tabled);
    expect(element.textContent).not.toContain('the next number');
    expect(element.textContent).toContain('Count up.');
  });

  it('knows the parameter sections schema.py reads', () => {
    const doc = 'Scale.\n\nKeyword Arguments:\n    factor: how much\n';
    const element = renderDocstring(doc, tabled);
    expect(element.textContent).not.toContain('how much');
  });

  it('keeps sections nothing else shows', () => {
    const doc = 'Divide.\n\nRaises:\n    ZeroDivisionError: when b is 0';
    const element = renderDocstring(doc, tabled);
    expect(headings(element)).toEqual(['Raises']);
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
