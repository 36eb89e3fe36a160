/**
 * The "Remote backends" sidebar: a toolbar, the tree, and the details of the selection.
 */
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import { CommandToolbarButton, SidePanel } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { Message } from '@lumino/messaging';
import { AccordionPanel, Widget } from '@lumino/widgets';

import { IDetailsActions, MemberDetails } from './details';
import { h } from './dom';
import { brokerIcon } from './icons';
import { IJobsActions, JobsView } from './jobs';
import { BrokersModel } from './model';
import { BackendsTree, ITreeActions } from './tree';

/** The widget id: stable, so layouts can restore it and tests can find its tab. */
export const PANEL_ID = 'de-magic-backends';

export namespace BackendsPanel {
  export interface IOptions {
    actions: ITreeActions & IDetailsActions & IJobsActions;
    commands: CommandRegistry;
    /** Commands shown as toolbar buttons, e.g. refresh and add broker. */
    toolbarCommands: string[];
    translator?: ITranslator;
  }
}

export class BackendsPanel extends SidePanel {
  constructor(options: BackendsPanel.IOptions) {
    const translator = options.translator ?? nullTranslator;
    super({ translator });
    const trans = translator.load('de-magic');
    this.id = PANEL_ID;
    this.title.icon = brokerIcon;
    this.title.caption = trans.__('Remote backends');
    this.addClass('jp-DeMagic-panel');

    // Poll only while someone can see the result.
    this.model = new BrokersModel({
      standby: () => !this.isVisible || document.visibilityState === 'hidden'
    });

    this.header.addWidget(
      new Widget({ node: h('h2', {}, trans.__('Remote backends')) })
    );
    for (const id of options.toolbarCommands) {
      this.toolbar.addItem(
        id,
        new CommandToolbarButton({
          commands: options.commands,
          id,
          args: { toolbar: true }
        })
      );
    }

    this.tree = new BackendsTree(this.model, options.actions);
    this.tree.title.label = trans.__('Brokers');
    this.details = new MemberDetails(this.model, options.actions);
    this.details.title.label = trans.__('Details');
    this.jobs = new JobsView(this.model, options.actions);
    this.jobs.title.label = trans.__('Jobs');
    this.addWidget(this.tree);
    this.addWidget(this.details);
    this.addWidget(this.jobs);

    this.tree.selectionChanged.connect((_, selection) => {
      this.details.selection = selection;
      const accordion = this.content as AccordionPanel;
      if (
        selection &&
        accordion.widgets.includes(this.details) &&
        this.details.isHidden
      ) {
        accordion.expand(accordion.widgets.indexOf(this.details));
      }
    });
  }

  readonly model: BrokersModel;
  readonly tree: BackendsTree;
  readonly details: MemberDetails;
  readonly jobs: JobsView;

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.dispose();
    super.dispose();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (!this._sized) {
      // The tree and the details of the selection share most of the height; the jobs get a fifth.
      (this.content as AccordionPanel).setRelativeSizes([2, 2, 1]);
      this._sized = true;
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    // Polls stood by while hidden: catch up at once rather than at the next tick.
    void this.model.refresh();
    void this.jobs.refresh();
    this.tree.render();
  }

  private _sized = false;
}
