/**
 * The panel's commands (show, refresh, add a broker) and the dialog that asks for a broker.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, ICommandPalette, showDialog } from '@jupyterlab/apputils';
import { addIcon, refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { brokerAddressProblem } from './address';
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
      await panel.model.refresh();
    }
  });
  app.commands.addCommand(CommandIDs.addBroker, {
    label: args => (args.toolbar ? '' : 'Add a Broker to Remote Backends'),
    caption: 'Add a broker (kept in the settings)',
    icon: addIcon,
    execute: async () => {
      const url = await askBrokerAddress();
      if (url) {
        await brokers.add(url);
      }
    }
  });
  for (const command of Object.values(CommandIDs)) {
    palette?.addItem({ command, category: 'Remote Backends' });
  }
}

/** The address the user enters, or null if they cancel; OK is only possible for a valid one. */
async function askBrokerAddress(): Promise<string | null> {
  const result = await showDialog({
    title: 'Add a broker',
    body: new BrokerAddressBody(),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Add' })],
    focusNodeSelector: 'input'
  });
  return result.button.accept ? result.value : null;
}

/**
 * An address field that says what is wrong as one types. Its `jp-mod-error` class is what
 * makes the dialog disable OK (and ignore Enter) while the address is not valid.
 */
class BrokerAddressBody extends Widget implements Dialog.IBodyWidget<string> {
  constructor() {
    super({ node: h('div', { class: 'jp-DeMagic-addBroker' }) });
    this._input = h('input', {
      class: 'jp-mod-styled',
      type: 'text',
      placeholder: 'tcp://host:5555',
      'aria-label': 'ZeroMQ address of a de-magic broker',
      spellcheck: 'false'
    });
    this._message = h('div', {
      class: 'jp-DeMagic-addBrokerMessage',
      role: 'alert'
    });
    this.node.append(
      h('label', {}, 'ZeroMQ address of a de-magic broker'),
      this._input,
      this._message
    );
    this._input.addEventListener('input', () => {
      this._check(false);
      this._revalidate();
    });
    // The empty field starts invalid, quietly: complaining before any typing is noise.
    this._check(true);
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    // The dialog starts listening once its children are attached: a frame later.
    requestAnimationFrame(() => this._revalidate());
  }

  getValue(): string {
    return this._input.value.trim();
  }

  /**
   * The dialog checks validity when an input event reaches it, which is before this body's
   * listener runs (it captures) and not at all on opening: have it check again.
   */
  private _revalidate(): void {
    this.node.dispatchEvent(new Event('input', { bubbles: true }));
  }

  private _check(quiet: boolean): void {
    const problem = brokerAddressProblem(this._input.value);
    this._input.classList.toggle('jp-mod-error', problem !== null);
    this._message.textContent = quiet ? '' : (problem ?? '');
  }

  private _input: HTMLInputElement;
  private _message: HTMLDivElement;
}
