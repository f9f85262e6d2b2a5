/**
 * The status page (`/`, `/status` on the metrics listener): one self-contained HTML document, no
 * external assets, whose inline script polls `status.json` (every 2 s, or `?refresh=MS`) and
 * updates the figures in place. Values are written with textContent only, never as HTML.
 */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Postern status</title>
<style>
  :root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --dim: #6e7781; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; max-width: 72rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
  h2 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
  .meta { color: var(--dim); }
  .cards { display: flex; flex-wrap: wrap; gap: .6rem; margin-top: 1rem; }
  .card { border: 1px solid #8884; border-radius: 6px; padding: .5rem .8rem; min-width: 8rem; }
  .card b { display: block; font-size: 1.4rem; font-variant-numeric: tabular-nums; }
  .card span { color: var(--dim); font-size: .85rem; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .25rem .6rem; border-bottom: 1px solid #8883; vertical-align: top; }
  th { font-weight: 600; font-size: .85rem; color: var(--dim); }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  .up { color: var(--ok); font-weight: 600; }
  .down { color: var(--bad); font-weight: 600; }
  #ready.ok { color: var(--ok); } #ready.bad { color: var(--bad); }
</style>
</head>
<body>
<h1>Postern <span id="version" class="meta"></span></h1>
<div class="meta"><span id="ready">…</span> · <span id="mode"></span> · up <span id="uptime"></span> · updated <span id="updated">never</span></div>
<div class="cards">
  <div class="card"><b id="t-current_sessions">–</b><span>live sessions</span></div>
  <div class="card"><b id="t-sessions">–</b><span>sessions</span></div>
  <div class="card"><b id="t-messages">–</b><span>messages</span></div>
  <div class="card"><b id="t-recipients">–</b><span>recipients</span></div>
  <div class="card"><b id="t-bytes_in">–</b><span>bytes in</span></div>
  <div class="card"><b id="t-bytes_out">–</b><span>bytes out</span></div>
  <div class="card"><b id="t-refusals">–</b><span>check refusals</span></div>
  <div class="card"><b id="t-tls_handshakes">–</b><span>TLS handshakes</span></div>
  <div class="card"><b id="t-auth_http_requests">–</b><span>auth_http requests</span></div>
  <div class="card"><b id="t-backend_connects">–</b><span>back-end set-ups</span></div>
</div>
<h2>Servers</h2>
<table id="servers"><thead><tr><th>listen</th><th>server_name</th><th>route</th><th>mode</th><th class="num">live</th><th class="num">sessions</th></tr></thead><tbody></tbody></table>
<div class="meta">bound: <span id="bound"></span></div>
<h2>Pools</h2>
<table id="pools"><thead><tr><th>pool</th><th>server</th><th>health</th><th>why</th><th>last check</th><th class="num">connections</th></tr></thead><tbody></tbody></table>
<div id="no-pools" class="meta" hidden>no pools configured</div>
<h2>Session outcomes</h2>
<table id="outcomes"><thead><tr><th>outcome</th><th class="num">sessions</th></tr></thead><tbody></tbody></table>
<h2>Check refusals</h2>
<table id="refusals"><thead><tr><th>code</th><th class="num">refusals</th></tr></thead><tbody></tbody></table>
<script>
(() => {
  const every = Math.max(250, Number(new URLSearchParams(location.search).get('refresh')) || 2000);
  const $ = (id) => document.getElementById(id);
  const text = (id, v) => { const e = $(id); if (e) e.textContent = String(v); };
  const fmt = (n) => typeof n === 'number' ? n.toLocaleString('en') : String(n);
  const row = (cells) => {
    const tr = document.createElement('tr');
    for (const c of cells) {
      const td = document.createElement('td');
      if (c && typeof c === 'object') { td.textContent = c.text; if (c.cls) td.className = c.cls; }
      else { td.textContent = c === null || c === undefined ? '' : (typeof c === 'number' ? fmt(c) : String(c)); if (typeof c === 'number') td.className = 'num'; }
      tr.appendChild(td);
    }
    return tr;
  };
  const fill = (id, rows) => { const body = $(id).tBodies[0]; body.replaceChildren(...rows.map(row)); };
  const duration = (s) => s < 120 ? s + ' s' : s < 7200 ? Math.round(s / 60) + ' min' : Math.round(s / 3600) + ' h';
  function render(s) {
    text('version', s.version + ' (pid ' + s.pid + ')');
    const r = $('ready'); r.textContent = s.ready.ok ? 'ready' : 'not ready: ' + s.ready.reason; r.className = s.ready.ok ? 'ok' : 'bad';
    text('mode', s.mode === 'cluster' ? s.workers + ' workers' : 'one process');
    text('uptime', duration(s.uptime_seconds));
    for (const [k, v] of Object.entries(s.totals)) text('t-' + k, fmt(v));
    fill('servers', s.servers.map((x) => [x.listen.map((l) => l.address + (l.tls === 'none' ? '' : ' (' + l.tls + ')')).join(', '), x.server_name, x.route, x.proxy_mode, x.current_sessions, x.sessions]));
    text('bound', s.listeners.bound.join(', ') || 'nothing yet');
    const pools = s.pools.flatMap((p) => p.servers.map((x) => [p.name, x.server + (x.backup ? ' (backup)' : ''),
      { text: x.up ? (x.usable === 0 ? 'up, held out' : 'up') : 'down', cls: x.up && x.usable !== 0 ? 'up' : 'down' },
      x.reason, x.last_check ? new Date(x.last_check).toLocaleTimeString() + ': ' + x.last_result : (x.checked ? 'not yet' : 'not checked'), x.connections]));
    fill('pools', pools);
    $('no-pools').hidden = pools.length > 0;
    fill('outcomes', Object.entries(s.outcomes).sort((a, b) => b[1] - a[1]));
    fill('refusals', Object.entries(s.refusals).sort((a, b) => b[1] - a[1]));
  }
  async function refresh() {
    try {
      const res = await fetch('status.json', { cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      render(await res.json());
      text('updated', new Date().toLocaleTimeString());
    } catch (err) {
      text('updated', 'failed (' + err.message + ')');
    } finally {
      setTimeout(refresh, every);
    }
  }
  refresh();
})();
</script>
</body>
</html>
`;
