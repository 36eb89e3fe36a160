/**
 * The panel's commands (show, refresh, add a broker) and the dialog that asks for a broker
 * and, for a CURVE broker, its public key.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  Notification,
  showDialog
} from '@jupyterlab/apputils';
import { addIcon, refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { brokerAddressProblem, brokerKeyProblem } from './address';
import { trustBroker } from './api';
import { BrokerSettings } from './brokers';
import { h } from './dom';
import { brokerIcon } from './icons';
import { BackendsPanel, PANEL_ID } from './panel';

export namespace CommandIDs {
  export const show = 'de-magic:show';
  export const refresh = 'de-magic:refresh';
  export const addBroker = 'de-magic:add-broker';
}

export function addCommands(
  app: JupyterFrontEnd,
  panel: BackendsPanel,
  brokers: BrokerSettings,
  palette: ICommandPalette | null
): void {
  app.commands.addCommand(CommandIDs.show, {
    label: 'Show Remote Backends',
    icon: brokerIcon,
    execute: () => app.shell.activateById(PANEL_ID)
  });
  app.commands.addCommand(CommandIDs.refresh, {
    label: args => (args.toolbar ? '' : 'Refresh Remote Backends'),
    caption: 'Ask every broker again now',
    icon: refreshIcon,
    execute: async () => {
      if (panel.model.serverError !== null) {
        await brokers.loadServer();
      }
      await Promise.all([panel.model.refresh(), panel.jobs.refresh()]);
    }
  });
  app.commands.addCommand(CommandIDs.addBroker, {
    label: args => (args.toolbar ? '' : 'Add a Broker to Remote Backends'),
    caption: 'Add a broker (kept in the settings) and trust its key',
    icon: addIcon,
    execute: async args => {
      const broker = await askBroker((args.url as string | undefined) ?? '');
      if (broker && (await trust(broker))) {
        await brokers.add(broker.url);
        await panel.model.refresh(); // a broker listed already is asked again, now with its key
        panel.tree.reveal(broker.url);
      }
    }
  });
  for (const command of Object.values(CommandIDs)) {
    palette?.addItem({ command, category: 'Remote Backends' });
  }
}

/** A broker's address and, for a CURVE broker, its public key (else ''). */
interface IBrokerEntry {
  url: string;
  key: string;
}

/** Store the broker's key on the server, if one was given; says why not and returns false if it fails. */
async function trust(broker: IBrokerEntry): Promise<boolean> {
  if (!broker.key) {
    return true;
  }
  try {
    await trustBroker(broker.url, broker.key);
    return true;
  } catch (reason) {
    Notification.error(
      `The key of ${broker.url} was not stored: ${(reason as Error).message ?? reason}`,
      { autoClose: false }
    );
    return false;
  }
}

/** What the user enters, or null if they cancel; OK is only possible for valid entries. */
async function askBroker(url: string): Promise<IBrokerEntry | null> {
  const result = await showDialog({
    title: url ? 'Add the public key of a broker' : 'Add a broker',
    body: new BrokerBody(url),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Add' })],
    // with the address given, what is asked for is the key
    focusNodeSelector: url ? 'input[data-field=key]' : 'input'
  });
  return result.button.accept ? result.value : null;
}

/**
 * An address field and a key field that say what is wrong as one types. Their `jp-mod-error`
 * class is what makes the dialog disable OK (and ignore Enter) while an entry is not valid.
 */
class BrokerBody extends Widget implements Dialog.IBodyWidget<IBrokerEntry> {
  /** `url`: the address to start with (a broker whose key is asked for), or ''. */
  constructor(url: string) {
    super({ node: h('div', { class: 'jp-DeMagic-addBroker' }) });
    this._input = h('input', {
      class: 'jp-mod-styled',
      type: 'text',
      placeholder: 'tcp://host:5555',
      'aria-label': 'ZeroMQ address of a de-magic broker',
      spellcheck: 'false'
    });
    this._input.value = url;
    this._message = h('div', {
      class: 'jp-DeMagic-addBrokerMessage',
      role: 'alert'
    });
    this._key = h('input', {
      class: 'jp-mod-styled',
      type: 'text',
      placeholder: 'Z85 text, or /path/to/broker.key',
      'data-field': 'key',
      'aria-label': "The broker's public key",
      spellcheck: 'false'
    });
    this.node.append(
      h('label', {}, 'ZeroMQ address of a de-magic broker'),
      this._input,
      h(
        'label',
        {},
        "Its public key, if it uses CURVE (stored in de-magic's config file)"
      ),
      this._key,
      this._message
    );
    for (const input of [this._input, this._key]) {
      input.addEventListener('input', () => {
        this._check(false);
        this._revalidate();
      });
    }
    // The empty field starts invalid, quietly: complaining before any typing is noise.
    this._check(true);
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    // The dialog starts listening once its children are attached: a frame later.
    requestAnimationFrame(() => this._revalidate());
  }

  getValue(): IBrokerEntry {
    // doors written as the settings schema and the server expect them: without spaces
    const url = this._input.value
      .split(',')
      .map(door => door.trim())
      .join(',');
    return { url, key: this._key.value.trim() };
  }

  /**
   * The dialog checks validity when an input event reaches it, which is before this body's
   * listener runs (it captures) and not at all on opening: have it check again.
   */
  private _revalidate(): void {
    this.node.dispatchEvent(new Event('input', { bubbles: true }));
  }

  private _check(quiet: boolean): void {
    const address = brokerAddressProblem(this._input.value);
    const key = brokerKeyProblem(this._key.value, this._input.value);
    this._input.classList.toggle('jp-mod-error', address !== null);
    this._key.classList.toggle('jp-mod-error', key !== null);
    this._message.textContent = quiet ? '' : (address ?? key ?? '');
  }

  private _input: HTMLInputElement;
  private _key: HTMLInputElement;
  private _message: HTMLDivElement;
}
