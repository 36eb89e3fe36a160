/**
 * The sidebar's own icon; everything else uses Lab's stock icons.
 * `jp-icon3` makes Lab recolour the glyph for light and dark themes.
 */
import { LabIcon } from '@jupyterlab/ui-components';

const brokerSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <circle cx="12" cy="12" r="3.2"/>
    <circle cx="4.5" cy="5" r="2.3"/>
    <circle cx="19.5" cy="5" r="2.3"/>
    <circle cx="4.5" cy="19" r="2.3"/>
    <circle cx="19.5" cy="19" r="2.3"/>
    <path d="M6.1 6.5 10 10.2l-1 1L5.1 7.5zM17.9 6.5 14 10.2l1 1 3.9-3.7zM6.1 17.5l3.9-3.7 1 1-3.9 3.7zM17.9 17.5 14 13.8l-1 1 3.9 3.7z"/>
  </g>
</svg>`;

export const brokerIcon = new LabIcon({
  name: 'de-magic:broker',
  svgstr: brokerSvg
});
