import { brokerAddressProblem, brokerKeyProblem } from '../src/address';

describe('brokerAddressProblem', () => {
  it.each([
    'tcp://localhost:5555',
    ' tcp://10.0.0.1:1 ',
    'tcp://[::1]:5555',
    'ipc:///tmp/broker',
    'inproc://broker'
  ])('accepts %p', url => {
    expect(brokerAddressProblem(url)).toBeNull();
  });

  it.each([
    ['localhost:5555', 'Did you mean tcp://localhost:5555?'],
    ['foo', 'not a ZeroMQ address'],
    ['tcp://host', 'needs a host and a port'],
    ['tcp://host:70000', 'out of range'],
    ['', 'Enter the address']
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
