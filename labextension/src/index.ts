/**
 * de-magic's JupyterLab extension: the "Remote backends" sidebar and its commands.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator } from '@jupyterlab/translation';

import { BrokerSettings } from './brokers';
import { CellInserter } from './cells';
import { CommandIDs, addCommands } from './commands';
import { BackendsPanel, PANEL_ID } from './panel';
import {
  ITarget,
  callSnippet,
  fetchSnippet,
  remoteResultSnippet,
  formSnippet,
  magicsSetup,
  remoteCellSnippet
} from './snippets';

const PLUGIN_ID = 'de-magic:plugin';

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'Browse de-magic brokers, backends and methods, and insert calls into notebooks.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILayoutRestorer, ISettingRegistry, ICommandPalette, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    translator: ITranslator | null
  ) => {
    const cells = new CellInserter(app, tracker);
    const panel: BackendsPanel = new BackendsPanel({
      commands: app.commands,
      toolbarCommands: [CommandIDs.addBroker, CommandIDs.refresh],
      translator: translator ?? undefined,
      actions: panelActions(app, cells, (): BrokerSettings => brokers)
    });
    const brokers: BrokerSettings = new BrokerSettings(panel.model);
    addCommands(app, panel, brokers, palette);
    app.shell.add(panel, 'left', { rank: 850 });
    restorer?.add(panel, PANEL_ID);

    void brokers.loadServer();
    if (settingRegistry) {
      brokers.loadSettings(settingRegistry, PLUGIN_ID).catch(reason => {
        console.warn('de-magic: could not load the settings', reason);
      });
    }
  }
};

/**
 * What the panel's buttons do. `brokers` is a getter since the broker settings need the
 * panel's model, which exists only once the panel does.
 */
function panelActions(
  app: JupyterFrontEnd,
  cells: CellInserter,
  brokers: () => BrokerSettings
): BackendsPanel.IOptions['actions'] {
  const setup = (broker: string) =>
    magicsSetup(broker, brokers().isDefault(broker));
  return {
    insertCall: (target: ITarget) =>
      void cells.insert(sources => callSnippet(target, sources)),
    insertRemoteCell: (broker: string, backend: string) =>
      void cells.insert(remoteCellSnippet(backend), setup(broker)),
    openForm: (target: ITarget) =>
      void cells.insert(formSnippet(target), setup(target.broker)),
    insertFetch: (broker: string, id: string, what: string) =>
      void (what === '%%remote'
        ? cells.insert(remoteResultSnippet(id), setup(broker))
        : cells.insert(sources => fetchSnippet(broker, id, sources))),
    removeBroker: (url: string) => void brokers().remove(url),
    addBrokerKey: (url: string) =>
      void app.commands.execute(CommandIDs.addBroker, { url })
  };
}

export default plugin;
