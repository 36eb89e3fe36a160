/**
 * Which brokers the panel lists: the server's (the default one first) and the user's own,
 * kept in the extension's settings with how often they are asked.
 */
import { Notification } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { IBrokers, fetchBrokers } from './api';
import { BrokersModel } from './model';

export class BrokerSettings {
  constructor(private _model: BrokersModel) {}

  /** The brokers the user added (removable in the panel). */
  get user(): string[] {
    return (this._settings?.composite.brokers as string[] | undefined) ?? [];
  }

  /** Whether `url` is the kernels' default broker (DE_MAGIC_BROKER of the server). */
  isDefault(url: string): boolean {
    return url === this._server.default;
  }

  async add(url: string): Promise<void> {
    if (!this.user.includes(url)) {
      await this._save([...this.user, url]);
    }
  }

  async remove(url: string): Promise<void> {
    await this._save(this.user.filter(b => b !== url));
  }

  /** Ask the server extension for its brokers; a failure is shown in the panel. */
  async loadServer(): Promise<void> {
    try {
      this._server = await fetchBrokers();
      this._model.serverError = null;
    } catch (reason) {
      this._model.serverError =
        'The de-magic server extension does not answer; is it enabled? ' +
        '(jupyter server extension list) ' +
        String((reason as Error).message ?? reason);
    }
    this._show();
  }

  /** Load the user's settings and follow their changes. */
  async loadSettings(
    registry: ISettingRegistry,
    plugin: string
  ): Promise<void> {
    this._settings = await registry.load(plugin);
    this._settings.changed.connect(() => this._apply());
    this._apply();
  }

  private _apply(): void {
    const seconds = (key: string, byDefault: number) =>
      ((this._settings?.composite[key] as number | undefined) ?? byDefault) *
      1000;
    const interval = seconds('refreshInterval', 5);
    this._model.setFrequency({
      interval,
      backoff: true,
      max: Math.max(seconds('maxRefreshInterval', 10), interval)
    });
    this._show();
  }

  private _show(): void {
    this._model.setBrokers(
      this._server.default,
      this._server.brokers,
      this.user
    );
  }

  private async _save(brokers: string[]): Promise<void> {
    if (!this._settings) {
      Notification.error(
        'The settings of the Remote backends panel are not available.',
        { autoClose: false }
      );
      return;
    }
    await this._settings.set('brokers', brokers);
  }

  private _server: IBrokers = { default: '', brokers: [] };
  private _settings: ISettingRegistry.ISettings | null = null;
}
