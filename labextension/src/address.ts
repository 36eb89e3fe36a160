/**
 * Broker addresses as the user types them: what is wrong with one, said in the dialog.
 */

/** The settings schema's pattern: a ZeroMQ transport and an endpoint. */
const BROKER_URL = /^(tcp|ipc|inproc):\/\/\S+$/;

/** `tcp://host:port`, the host a name, an IPv4 address or a bracketed IPv6 address. */
const TCP_URL = /^tcp:\/\/([\w.-]+|\[[0-9a-fA-F:.]+\]):(\d{1,5})$/;

/**
 * Why `text` is not an address a client can connect to, or null when it is. A `host:port`
 * without a transport gets the `tcp://` form suggested, since that is what it nearly always is.
 * A consortium's equivalent brokers may be given together, separated by commas.
 */
export function brokerAddressProblem(text: string): string | null {
  if (!text.trim()) {
    return 'Enter the address of a broker, e.g. tcp://localhost:5555.';
  }
  for (const url of text.split(',')) {
    const problem = oneAddressProblem(url.trim());
    if (problem) {
      return problem;
    }
  }
  return null;
}

function oneAddressProblem(url: string): string | null {
  if (!url) {
    return 'An empty address between commas: give each broker as tcp://host:port.';
  }
  if (!BROKER_URL.test(url)) {
    const hostPort = /^[\w.-]+:\d+$/.test(url)
      ? ` Did you mean tcp://${url}?`
      : '';
    return `“${url}” is not a ZeroMQ address: expected tcp://host:port.${hostPort}`;
  }
  if (url.startsWith('tcp://')) {
    const match = TCP_URL.exec(url);
    if (!match) {
      return `“${url}” needs a host and a port: tcp://host:port.`;
    }
    if (Number(match[2]) < 1 || Number(match[2]) > 65535) {
      return `Port ${match[2]} is out of range (1 to 65535).`;
    }
  }
  return null;
}

/** The 85 characters of ZeroMQ's Z85 encoding, in which CURVE public keys are written (40 of them). */
const Z85_KEY = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;

/**
 * Why `text` is not a broker's public key, or null when it may be one (or is empty: a plain
 * broker needs none). A key is its Z85 text, or the path of its `.key` file on the server;
 * the server reads and checks either before storing it.
 */
export function brokerKeyProblem(text: string, address = ''): string | null {
  const key = text.trim();
  if (key && address.includes(',')) {
    return "Each broker has a key of its own: add one broker's address with its key at a time.";
  }
  if (!key || Z85_KEY.test(key) || /^[~/]/.test(key)) {
    return null;
  }
  return (
    'Not a public key: paste the 40 characters of its public-key line ' +
    '(Z85 text), or give the path of its .key file on the server.'
  );
}
