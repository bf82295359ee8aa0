// Fleet map: machines placed by their GPS fix (Web Mercator), grouped per position, each
// group coloured by its worst connectivity class. Useful without any tiles (a plain
// background with a latitude/longitude grid); with console.map_tiles_url set, the tiles
// of the one zoom level that fits the fleet are laid under the points. No pan or zoom:
// it answers "where are the machines that are not reporting", not street navigation.

import {qs} from './api.js';
import {fmtNum, h} from './dom.js';
import {svg} from './chart.js';

const W = 640;
const H = 360;
const TILE = 256;
const WORST = ['offline', 'stale', 'never', 'disabled', 'online']; // first match colours a group

function mercator(lat, lon) {
  const s = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180);
  return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)]; // 0..1 world units
}

function groupPoints(points) {
  const groups = new Map();
  for (const p of points) {
    const key = `${p.lat.toFixed(3)},${p.lon.toFixed(3)}`;
    const g = groups.get(key) || {lat: p.lat, lon: p.lon, site_id: p.site_id, devices: [], classes: {}};
    g.devices.push(p.device_id);
    g.classes[p.connectivity] = (g.classes[p.connectivity] || 0) + 1;
    if (g.site_id !== p.site_id) g.site_id = null;
    groups.set(key, g);
  }
  for (const g of groups.values()) g.worst = WORST.find((c) => g.classes[c]) || 'online';
  return [...groups.values()];
}

/** Substitute a tile template; the URL comes from the server's configuration, not from devices. */
function tileUrl(template, z, x, y) {
  return template.replace('{z}', z).replace('{x}', x).replace('{y}', y);
}

export function fleetMap({points, tiles, truncated}) {
  if (!points.length) {
    return h('p', {class: 'muted', 'data-testid': 'map-empty'}, 'No machine has reported a GPS position yet.');
  }
  const groups = groupPoints(points);
  const world = groups.map((g) => mercator(g.lat, g.lon));
  let [x0, x1] = [Math.min(...world.map((p) => p[0])), Math.max(...world.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...world.map((p) => p[1])), Math.max(...world.map((p) => p[1]))];
  // the zoom at which the fleet (plus a margin) fits; at least a city block wide
  const spanX = Math.max(x1 - x0, 1e-4) * 1.3;
  const spanY = Math.max(y1 - y0, 1e-4) * 1.3;
  const z = Math.max(0, Math.min(18, Math.floor(Math.log2(Math.min(W / (spanX * TILE), H / (spanY * TILE))))));
  const scale = TILE * 2 ** z; // pixels per world unit
  const cx = ((x0 + x1) / 2) * scale - W / 2;
  const cy = ((y0 + y1) / 2) * scale - H / 2;
  const px = ([wx, wy]) => [wx * scale - cx, wy * scale - cy];

  const layers = [];
  if (tiles && tiles.url) {
    const n = 2 ** z;
    const imgs = [];
    for (let ty = Math.floor(cy / TILE); ty * TILE < cy + H; ty++) {
      for (let tx = Math.floor(cx / TILE); tx * TILE < cx + W; tx++) {
        if (ty < 0 || ty >= n) continue;
        const img = document.createElement('img');
        img.src = tileUrl(tiles.url, z, ((tx % n) + n) % n, ty);
        img.alt = '';
        img.className = 'map-tile';
        img.style.left = `${tx * TILE - cx}px`;
        img.style.top = `${ty * TILE - cy}px`;
        imgs.push(img);
      }
    }
    layers.push(h('div', {class: 'map-tiles', 'data-testid': 'map-tiles'}, imgs));
  }
  const parts = [];
  if (!tiles || !tiles.url) {
    // a latitude/longitude grid so a plain map still shows where things are
    [x0, x1, y0, y1] = [cx / scale, (cx + W) / scale, cy / scale, (cy + H) / scale];
    const lonStep = niceDeg((x1 - x0) * 360 / 4);
    for (let lon = Math.ceil((x0 * 360 - 180) / lonStep) * lonStep; (lon + 180) / 360 <= x1; lon += lonStep) {
      const [gx] = px(mercator(0, lon));
      parts.push(svg('line', {class: 'graticule', x1: gx, x2: gx, y1: 0, y2: H}),
        svg('text', {class: 'tick', x: gx + 2, y: H - 4}, `${fmtNum(lon, lonStep < 1 ? 2 : 0)}°`));
    }
    const latOf = (wy) => (Math.atan(Math.sinh(Math.PI * (1 - 2 * wy))) * 180) / Math.PI;
    const [latTop, latBottom] = [latOf(y0), latOf(y1)];
    const latStep = niceDeg((latTop - latBottom) / 4);
    for (let lat = Math.ceil(latBottom / latStep) * latStep; lat <= latTop; lat += latStep) {
      const [, gy] = px(mercator(lat, 0));
      parts.push(svg('line', {class: 'graticule', x1: 0, x2: W, y1: gy, y2: gy}),
        svg('text', {class: 'tick', x: 2, y: gy - 2}, `${fmtNum(lat, latStep < 1 ? 2 : 0)}°`));
    }
  }
  groups.forEach((g, i) => {
    const [gx, gy] = px(world[i]);
    const n = g.devices.length;
    const label = `${g.site_id || 'several sites'}: ${n} machine${n === 1 ? '' : 's'} (`
      + Object.entries(g.classes).map(([c, k]) => `${k} ${c}`).join(', ') + ')';
    const href = g.site_id ? `/console/devices${qs({site_id: g.site_id})}` : `/console/devices/${encodeURIComponent(g.devices[0])}`;
    const link = svg('a', {class: `map-point conn-${g.worst}`, 'data-testid': 'map-point', 'data-class': g.worst,
      'data-site': g.site_id || ''},
    svg('title', {}, label),
    svg('circle', {cx: gx, cy: gy, r: Math.min(18, 5 + Math.sqrt(n) * 2)}),
    n > 1 ? svg('text', {x: gx, y: gy + 4, 'text-anchor': 'middle'}, String(n)) : null);
    link.setAttribute('href', href); // a console path built here, never device text as a URL
    parts.push(link);
  });
  const overlay = svg('svg', {viewBox: `0 0 ${W} ${H}`, class: 'map-svg', role: 'img'},
    svg('title', {}, `Map of ${points.length} machines`), ...parts);
  const counts = {};
  for (const p of points) counts[p.connectivity] = (counts[p.connectivity] || 0) + 1;
  return h('figure', {class: 'map-box', 'data-testid': 'fleet-map'},
    h('div', {class: `map ${tiles && tiles.url ? 'map-with-tiles' : 'map-plain'}`}, layers, overlay),
    h('figcaption', {class: 'legend-row small'},
      WORST.filter((c) => counts[c]).map((c) => h('span', {class: `legend-dot conn-${c}`}, `${c} ${fmtNum(counts[c])}`)),
      truncated ? h('span', {class: 'muted'}, 'only the first machines are drawn') : null,
      tiles && tiles.attribution ? h('span', {class: 'muted'}, tiles.attribution) : null,
      h('span', {class: 'muted'}, 'Click a point for its machines.')));
}

function niceDeg(raw) {
  const steps = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 45, 90];
  return steps.find((s) => s >= raw) || 90;
}
