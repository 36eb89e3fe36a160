import { age, progressText } from '../src/jobtext';

describe('progressText', () => {
  it('writes a report as the Python side does', () => {
    expect(progressText({ desc: 'adding', n: 3, total: 10, unit: 'it' })).toBe(
      'adding: 3/10 it'
    );
    expect(progressText({ desc: null, n: 4 })).toBe('progress: 4');
    expect(progressText(null)).toBe('');
  });
});

describe('age', () => {
  it('uses the largest unit that fits', () => {
    expect(age(100, 142)).toBe('42 s');
    expect(age(0, 7200)).toBe('2 h');
    expect(age(0, 3 * 86400)).toBe('3 d');
  });
});
