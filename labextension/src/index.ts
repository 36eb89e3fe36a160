/**
 * de-magic's JupyterLab extension: the "Remote backends" sidebar and its commands.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  InputDialog,
  Notification
} from '@jupyterlab/apputils';
import {
  INotebookTracker,
  NotebookActions,
  NotebookPanel
} from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator } from '@jupyterlab/translation';
import { addIcon, refreshIcon } from '@jupyterlab/ui-components';

import { fetchBrokers } from './api';
import { brokerIcon } from './icons';
import { BackendsPanel, PANEL_ID } from './panel';
import {
  ITarget,
  callSnippet,
  formSnippet,
  magicsSetup,
  missingSetup,
  remoteCellSnippet
} from './snippets';

const PLUGIN_ID = 'de-magic:plugin';

namespace CommandIDs {
  export const show = 'de-magic:show';
  export const refresh = 'de-magic:refresh';
  export const addBroker = 'de-magic:add-broker';
}

const BROKER_URL = /^(tcp|ipc|inproc):\/\/\S+$/;

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
    let settings: ISettingRegistry.ISettings | null = null;
    let serverBrokers: { default: string | null; brokers: string[] } = {
      default: null,
      brokers: []
    };

    const userBrokers = (): string[] =>
      (settings?.composite.brokers as string[] | undefined) ?? [];

    /** The active notebook, or a new one when none is open. */
    const notebook = async (): Promise<NotebookPanel> => {
      let current = tracker.currentWidget;
      if (!current) {
        current = (await app.commands.execute('notebook:create-new', {
          kernelName: 'python3'
        })) as NotebookPanel;
        await current.context.ready;
      }
      await current.revealed;
      return current;
    };

    /**
     * Put `code` in a new code cell below the active one; an empty active code cell (as in a
     * new notebook) is used as it is rather than left behind. `setup` lines that the notebook
     * lacks (loading the magics, connecting them to the broker) go first: in a cell of their
     * own when `code` is a cell magic, which must be the first line of its cell.
     */
    const insertCell = async (
      code: string,
      setup: string[] = []
    ): Promise<void> => {
      const current = await notebook();
      const content = current.content;
      const empty = (): boolean =>
        content.activeCell?.model.type === 'code' &&
        content.activeCell.model.sharedModel.getSource().trim() === '';
      const put = (source: string) => {
        if (!content.activeCell || !empty()) {
          NotebookActions.insertBelow(content);
        }
        if (content.activeCell?.model.type !== 'code') {
          NotebookActions.changeCellType(content, 'code');
        }
        content.activeCell!.model.sharedModel.setSource(source);
      };
      const sources = Array.from(content.model?.cells ?? []).map(cell =>
        cell.sharedModel.getSource()
      );
      const missing = missingSetup(setup, sources);
      if (missing.length && code.startsWith('%%')) {
        put(missing.join('\n'));
        put(code);
      } else {
        put([...missing, code].join('\n'));
      }
      app.shell.activateById(current.id);
      content.activate();
    };

    const isDefault = (broker: string) => broker === serverBrokers.default;

    const saveUserBrokers = async (brokers: string[]): Promise<void> => {
      if (!settings) {
        Notification.error(
          'The settings of the Remote backends panel are not available.'
        );
        return;
      }
      await settings.set('brokers', brokers);
    };

    const panel = new BackendsPanel({
      commands: app.commands,
      toolbarCommands: [CommandIDs.addBroker, CommandIDs.refresh],
      translator: translator ?? undefined,
      actions: {
        insertCall: (target: ITarget) => void insertCell(callSnippet(target)),
        insertRemoteCell: (broker: string, backend: string) =>
          void insertCell(
            remoteCellSnippet(backend),
            magicsSetup(broker, isDefault(broker))
          ),
        openForm: (target: ITarget) =>
          void insertCell(
            formSnippet(target),
            magicsSetup(target.broker, isDefault(target.broker))
          ),
        removeBroker: (url: string) =>
          void saveUserBrokers(userBrokers().filter(b => b !== url))
      }
    });

    const showBrokers = () =>
      panel.model.setBrokers(
        serverBrokers.default,
        serverBrokers.brokers,
        userBrokers()
      );

    const loadServerBrokers = async (): Promise<void> => {
      try {
        serverBrokers = await fetchBrokers();
        panel.model.serverError = null;
      } catch (reason) {
        panel.model.serverError =
          'The de-magic server extension does not answer; is it enabled? ' +
          '(jupyter server extension list) ' +
          String((reason as Error).message ?? reason);
      }
      showBrokers();
    };

    const applySettings = () => {
      const interval =
        ((settings?.composite.refreshInterval as number) ?? 5) * 1000;
      const max =
        ((settings?.composite.maxRefreshInterval as number) ?? 60) * 1000;
      panel.model.setFrequency({
        interval,
        backoff: true,
        max: Math.max(max, interval)
      });
      showBrokers();
    };

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
          await loadServerBrokers();
        }
        await panel.model.refresh();
      }
    });
    app.commands.addCommand(CommandIDs.addBroker, {
      label: args => (args.toolbar ? '' : 'Add a Broker to Remote Backends'),
      caption: 'Add a broker (kept in the settings)',
      icon: addIcon,
      execute: async () => {
        const result = await InputDialog.getText({
          title: 'Add a broker',
          label: 'ZeroMQ address of a de-magic broker',
          placeholder: 'tcp://host:5555'
        });
        const url = result.value?.trim();
        if (!result.button.accept || !url) {
          return;
        }
        if (!BROKER_URL.test(url)) {
          Notification.error(
            `Not a broker address: ${url} (expected tcp://host:port)`
          );
          return;
        }
        if (!userBrokers().includes(url)) {
          await saveUserBrokers([...userBrokers(), url]);
        }
      }
    });
    palette?.addItem({ command: CommandIDs.show, category: 'Remote Backends' });
    palette?.addItem({
      command: CommandIDs.refresh,
      category: 'Remote Backends'
    });
    palette?.addItem({
      command: CommandIDs.addBroker,
      category: 'Remote Backends'
    });

    app.shell.add(panel, 'left', { rank: 850 });
    restorer?.add(panel, PANEL_ID);

    void loadServerBrokers();
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(loaded => {
          settings = loaded;
          loaded.changed.connect(applySettings);
          applySettings();
        })
        .catch(reason => {
          console.warn('de-magic: could not load the settings', reason);
        });
    }
  }
};

export default plugin;
