/**
 * Putting the panel's snippets into the active notebook (a new one when none is open).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  INotebookTracker,
  Notebook,
  NotebookActions,
  NotebookPanel
} from '@jupyterlab/notebook';

import { missingSetup } from './snippets';

/** Code for a cell, made knowing the notebook's cells (e.g. to reuse their client). */
export type CellCode = string | ((sources: string[]) => string);

export class CellInserter {
  constructor(
    private _app: JupyterFrontEnd,
    private _tracker: INotebookTracker
  ) {}

  /**
   * Put `code` in a new code cell below the active one; an empty active code cell (as in a
   * new notebook) is used as it is rather than left behind. `setup` lines that the notebook
   * lacks (loading the magics, connecting them to the broker) go first: in a cell of their
   * own when `code` is a cell magic, which must be the first line of its cell.
   */
  async insert(code: CellCode, setup: string[] = []): Promise<void> {
    const current = await this._notebook();
    const content = current.content;
    const sources = Array.from(content.model?.cells ?? []).map(cell =>
      cell.sharedModel.getSource()
    );
    const text = typeof code === 'string' ? code : code(sources);
    const missing = missingSetup(setup, sources);
    if (missing.length && text.startsWith('%%')) {
      putCell(content, missing.join('\n'));
      putCell(content, text);
    } else {
      putCell(content, [...missing, text].join('\n'));
    }
    this._app.shell.activateById(current.id);
    content.activate();
  }

  private async _notebook(): Promise<NotebookPanel> {
    let current = this._tracker.currentWidget;
    if (!current) {
      current = (await this._app.commands.execute('notebook:create-new', {
        kernelName: 'python3'
      })) as NotebookPanel;
      await current.context.ready;
    }
    await current.revealed;
    return current;
  }
}

/** Write `source` into the active cell if it is an empty code cell, else into a new one below. */
function putCell(content: Notebook, source: string): void {
  const active = content.activeCell;
  const empty =
    active?.model.type === 'code' &&
    active.model.sharedModel.getSource().trim() === '';
  if (!active || !empty) {
    NotebookActions.insertBelow(content);
  }
  if (content.activeCell?.model.type !== 'code') {
    NotebookActions.changeCellType(content, 'code');
  }
  content.activeCell!.model.sharedModel.setSource(source);
}
