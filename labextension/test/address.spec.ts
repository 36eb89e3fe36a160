import { brokerAddressProblem } from '../src/address';

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
