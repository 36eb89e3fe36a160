import { brokerAddressProblem, brokerKeyProblem } from '../src/address';

describe('brokerAddressProblem', () => {
  it.each([
    'tcp://localhost:5555',
    ' tcp://10.0.0.1:1 ',
    'tcp://[::1]:5555',
    'ipc:///tmp/broker',
    'inproc://broker',
    'tcp://a:5555,tcp://b:5555',
    ' tcp://a:5555, tcp://[::1]:5555 '
  ])('accepts %p', url => {
    expect(brokerAddressProblem(url)).toBeNull();
  });

  it.each([
    ['localhost:5555', 'Did you mean tcp://localhost:5555?'],
    ['foo', 'not a ZeroMQ address'],
    ['tcp://host', 'needs a host and a port'],
    ['tcp://host:70000', 'out of range'],
    ['', 'Enter the address'],
    ['tcp://a:5555,,tcp://b:5555', 'An empty address between commas'],
    ['tcp://a:5555,b:5555', 'Did you mean tcp://b:5555?']
  ])('says what is wrong with %p', (url, message) => {
    expect(brokerAddressProblem(url)).toContain(message);
  });
});

describe('brokerKeyProblem', () => {
  it.each([
    '',
    'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7',
    ' rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7 ',
    '/etc/de-magic/broker.key',
    '~/keys/broker.key'
  ])('accepts %p', key => {
    expect(brokerKeyProblem(key)).toBeNull();
  });

  it.each([
    'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf', // 39 characters
    'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"', // a quote is not Z85
    'broker.key'
  ])('refuses %p', key => {
    expect(brokerKeyProblem(key)).toContain('Not a public key');
  });
});

it('asks for one broker at a time with a key', () => {
  const key = 'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7';
  expect(brokerKeyProblem(key, 'tcp://a:1,tcp://b:2')).toContain(
    'a key of its own'
  );
  expect(brokerKeyProblem('', 'tcp://a:1,tcp://b:2')).toBeNull();
});
