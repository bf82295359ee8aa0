// Operator API client. The token lives in sessionStorage (gone when the tab closes)
// and travels only in the Authorization header, never in a URL.

const KEY = 'vendwatch.operator-token';

export const token = () => sessionStorage.getItem(KEY);
export const setToken = (t) => sessionStorage.setItem(KEY, t);
export const clearToken = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** True when the endpoint does not exist on this server (a part not installed). */
  get missing() {
    return this.code === 'no_route';
  }
}

/** Call the API; resolves to the decoded JSON body, rejects with ApiError. */
export async function api(path, {method = 'GET', body, tokenOverride} = {}) {
  const headers = {Accept: 'application/json'};
  const t = tokenOverride || token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method, headers, cache: 'no-store', credentials: 'omit',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the vendwatch server (${e.message})`);
  }
  const isJson = (res.headers.get('content-type') || '').includes('json');
  const data = isJson ? await res.json().catch(() => null) : null;
  if (res.ok) return data;
  if (res.status === 401 && !tokenOverride) {
    clearToken();
    window.dispatchEvent(new CustomEvent('vw:unauthorized'));
  }
  // a plain-text 404/405 is the router saying "no such endpoint": that part is not running
  if ((res.status === 404 || res.status === 405) && !isJson) {
    throw new ApiError(res.status, 'no_route', `${path.split('?')[0]} is not served by this vendwatch`);
  }
  const err = (data && data.error) || {};
  throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText || 'request failed');
}

/** Fetch a file with the token and hand it to the browser as a download (no token in any URL). */
export async function download(path, filename, {method = 'GET', body} = {}) {
  const headers = {Authorization: `Bearer ${token()}`};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {method, headers, cache: 'no-store', credentials: 'omit',
    body: body === undefined ? undefined : JSON.stringify(body)});
  if (!res.ok) {
    const data = await res.json().catch(() => null);
    throw new ApiError(res.status, data?.error?.code || `http_${res.status}`, data?.error?.message || res.statusText);
  }
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** "?a=1&b=x" from an object, skipping empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === '' || v === false) continue;
    for (const one of Array.isArray(v) ? v : [v]) p.append(k, one === true ? '1' : String(one));
  }
  const s = p.toString();
  return s ? `?${s}` : '';
}
