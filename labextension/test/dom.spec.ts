import {
  age,
  availability,
  badge,
  bytes,
  h,
  held,
  highlighted,
  plural
} from '../src/dom';

describe('h', () => {
  it('sets attributes and appends children, skipping empty ones', () => {
    const element = h(
      'div',
      { class: 'x', title: undefined },
      'a',
      null,
      false,
      h('b', {}, 'c')
    );
    expect(element.outerHTML).toBe('<div class="x">a<b>c</b></div>');
  });

  it('never parses text as HTML', () => {
    expect(h('p', {}, '<img src=x>').innerHTML).toBe('&lt;img src=x&gt;');
  });
});

describe('highlighted', () => {
  it('marks the first case-insensitive match', () => {
    const holder = h('div', {}, highlighted('slow_Sum', 'sum'));
    expect(holder.innerHTML).toBe('<span>slow_<mark>Sum</mark></span>');
  });

  it('is plain text without a match', () => {
    expect(highlighted('echo', 'sum').textContent).toBe('echo');
  });
});

describe('age', () => {
  const now = 1_000_000_000;
  it.each([
    [now / 1000 - 42, '42 s'],
    [now / 1000 - 600, '10 min'],
    [now / 1000 - 7200, '2 h'],
    [now / 1000 - 3 * 86400, '3 days'],
    [null, '']
  ])('of %p is %p', (since, text) => {
    expect(age(since, now)).toBe(text);
  });
});

describe('badge and plural', () => {
  it('gives one letter per kind', () => {
    expect(
      ['class', 'method', 'function'].map(k => badge(k).textContent)
    ).toEqual(['c', 'm', 'f']);
    expect(badge('class').dataset.kind).toBe('class');
  });

  it('counts', () => {
    expect(plural(1, 'worker')).toBe('1 worker');
    expect(plural(2, 'worker')).toBe('2 workers');
  });
});

describe('bytes and held', () => {
  it.each([
    [0, '0 B'],
    [512, '512 B'],
    [3500, '3.5 kB'],
    [209_715_200, '210 MB'],
    [1.5e12, '1.5 TB']
  ])('of %p is %p', (count, text) => {
    expect(bytes(count)).toBe(text);
  });

  it('says how many and how much, or 0', () => {
    expect(held({ count: 2, bytes: 211_800_000 })).toBe('2 (212 MB)');
    expect(held({ count: 0, bytes: 0 })).toBe('0');
    expect(held(undefined)).toBe('0');
  });
});

describe('availability', () => {
  const now = 1_000_000_000;
  it('counts the workers of a live backend', () => {
    const backend = {
      name: 'b',
      allow_code: false,
      workers: [{ id: '1', host: 'h', pid: 7 }]
    };
    expect(availability(backend, now * 1000)).toEqual({
      text: '1 worker',
      title: 'h pid 7',
      offline: false
    });
  });

  it('says since when an offline backend is down, its waiting jobs and a pending launch', () => {
    const backend = {
      name: 'b',
      allow_code: false,
      workers: [],
      offline: now - 120,
      waiting: 3,
      launch: { pending: true, since: now - 5, command: 'sbatch b.sh' }
    };
    const shown = availability(backend, now * 1000);
    expect(shown.text).toBe('offline 2 min, 3 waiting, launch pending');
    expect(shown.offline).toBe(true);
    expect(shown.title).toContain('3 jobs wait for it at the broker');
    expect(shown.title).toContain('sbatch b.sh');
  });

  it('says why a launch failed', () => {
    const backend = {
      name: 'b',
      allow_code: false,
      workers: [],
      offline: now,
      launch: { pending: true, since: now, command: 'x', error: 'x: not found' }
    };
    expect(availability(backend, now * 1000).text).toBe(
      'offline 0 s, launch failed'
    );
  });
});
