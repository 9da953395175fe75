/* The dashboard: plain JavaScript, no build step. Reads the same API as scripts do; the browser
   authenticates with the HttpOnly session cookie (never with the key) and sends the CSRF token
   on state-changing requests. Live updates come from the SSE streams (/events, /events/{id}). */
'use strict';

const RANK = { viewer: 0, operator: 1, admin: 2 };
const TERMINAL = new Set(['completed', 'failed', 'stopped']);
const LOG_LINES_SHOWN = 1000;
const PAGE_SIZE = 25;
const app = { session: null, lang: 'en', streams: [], timers: [], steps: null, routeId: 0 };

/* ---- texts, dates, numbers ---------------------------------------------------------------- */

function pickLanguage() {
  const saved = localStorage.getItem('etl.lang');
  if (saved && window.I18N[saved]) return saved;
  const wanted = (navigator.languages || [navigator.language || 'en']).map((l) => l.toLowerCase());
  return wanted.some((l) => l.startsWith('pt')) ? 'pt-BR' : 'en';
}

function t(key, vars) {
  const text = (window.I18N[app.lang] || {})[key] ?? window.I18N.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (vars && name in vars ? vars[name] : ''));
}

function utcOffset(date) {
  const minutes = -date.getTimezoneOffset();
  const sign = minutes >= 0 ? '+' : '−';
  const abs = Math.abs(minutes);
  return `UTC${sign}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`;
}

function fmtDate(value) {
  if (value === null || value === undefined || value === '') return t('none');
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const text = new Intl.DateTimeFormat(app.lang, { dateStyle: 'short', timeStyle: 'medium' }).format(date);
  return `${text} ${utcOffset(date)}`;
}

function fmtNumber(value, digits = 0) {
  if (value === null || value === undefined) return t('none');
  return new Intl.NumberFormat(app.lang, { maximumFractionDigits: digits, minimumFractionDigits: digits }).format(value);
}

function fmtSeconds(value) {
  if (value === null || value === undefined) return t('none');
  if (value < 1) return `${fmtNumber(value * 1000, 0)} ms`;
  if (value < 120) return `${fmtNumber(value, 2)} s`;
  return `${fmtNumber(value / 60, 1)} min`;
}

function createdFromId(taskId) {
  // Task ids are UUIDv7: the first 48 bits are the creation time in milliseconds.
  const ms = parseInt(taskId.replace(/-/g, '').slice(0, 12), 16);
  return new Date(ms).toISOString();
}

function idAtTime(ms) {
  // The greatest UUIDv7 of that millisecond: a /tasks cursor that lists tasks created before it.
  const hex = Math.max(0, Math.floor(ms)).toString(16).padStart(12, '0');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-7fff-bfff-ffffffffffff`;
}

/* ---- DOM ---------------------------------------------------------------------------------- */

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function badge(status) {
  return el('span', { class: `badge s-${status}`, 'data-status': status, text: t(`status.${status}`) });
}

function progressBar(value, label) {
  const bar = el('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100',
    'aria-valuenow': String(Math.round(value || 0)), 'aria-label': label || t('col.progress') });
  const fill = el('span');
  fill.style.width = `${Math.max(0, Math.min(100, value || 0))}%`;
  bar.append(fill);
  return bar;
}

function setProgress(bar, value) {
  bar.setAttribute('aria-valuenow', String(Math.round(value || 0)));
  bar.firstChild.style.width = `${Math.max(0, Math.min(100, value || 0))}%`;
}

function main() { return document.getElementById('main'); }

function render(token, ...nodes) {
  // A page whose data arrived after the user moved on must not paint over the new page.
  if (token !== app.routeId) return false;
  main().replaceChildren(...nodes);
  return true;
}

function banner(text, kind) {
  const node = document.getElementById('banner');
  if (!text) { node.hidden = true; node.textContent = ''; return; }
  node.hidden = false;
  node.className = `banner ${kind || ''}`;
  node.textContent = text;
}

/* ---- API ---------------------------------------------------------------------------------- */

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || t('error.generic', { status }));
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && app.session && app.session.csrf) headers['X-CSRF-Token'] = app.session.csrf;
  const response = await fetch(path, { method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (response.status === 401 && !path.startsWith('/ui/')) { showLogin(data && data.detail); throw new ApiError(401, data); }
  if (!response.ok && !(path === '/health' && response.status === 503)) throw new ApiError(response.status, data);
  return data;
}

function can(role) { return app.session && RANK[app.session.role] >= RANK[role]; }

/* ---- live streams ------------------------------------------------------------------------- */

class LiveStream {
  /* An EventSource that reconnects itself (also after a server restart, when the browser's own
     retry gives up on an error answer) and resumes after the last event id it saw. */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.lastId = null;
    this.delay = 1000;
    this.closed = false;
    this.lost = false;
    this.open();
  }

  open() {
    if (this.closed) return;
    let url = this.url;
    if (this.lastId) url += `${url.includes('?') ? '&' : '?'}after=${encodeURIComponent(this.lastId)}`;
    const source = new EventSource(url, { withCredentials: true });
    this.source = source;
    source.onopen = () => {
      this.delay = 1000;
      document.body.dataset.live = 'open';
      if (this.lost) { this.lost = false; banner(t('conn.back'), 'ok'); setTimeout(() => banner(''), 2500); }
    };
    source.onerror = () => {
      if (this.closed) return;
      source.close();
      this.lost = true;
      document.body.dataset.live = 'lost';
      banner(t('conn.lost'), 'warn');
      this.timer = setTimeout(() => this.open(), this.delay);
      this.delay = Math.min(this.delay * 2, 8000);
    };
    for (const [name, handler] of Object.entries(this.handlers)) {
      source.addEventListener(name, (event) => {
        if (event.lastEventId) this.lastId = event.lastEventId;
        handler(JSON.parse(event.data), event);
        if (name === 'end') this.close();
      });
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
  }
}

function stream(url, handlers) {
  const live = new LiveStream(url, handlers);
  app.streams.push(live);
  return live;
}

function every(ms, job) { app.timers.push(setInterval(job, ms)); }

function leavePage() {
  delete document.body.dataset.live;
  for (const live of app.streams) live.close();
  for (const timer of app.timers) clearInterval(timer);
  app.streams = [];
  app.timers = [];
  banner('');
}

/* ---- session ------------------------------------------------------------------------------ */

async function loadSession() {
  const response = await fetch('/ui/session', { credentials: 'same-origin' });
  app.session = response.ok ? await response.json() : null;
  paintHeader();
  return app.session;
}

function paintHeader() {
  const who = document.getElementById('who');
  const logout = document.getElementById('logout');
  const session = app.session;
  who.textContent = session ? `${session.auth ? session.name : t('anonymous')} · ${t('role')}: ${session.role}` : '';
  logout.hidden = !(session && session.auth);
  document.getElementById('nav-run').hidden = !can('operator');
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  document.documentElement.lang = app.lang;
}

function showLogin(message) {
  leavePage();
  app.session = null;
  paintHeader();
  const error = el('p', { class: 'error', id: 'login-error', role: 'alert', text: message || '' });
  const input = el('input', { id: 'login-key', type: 'password', autocomplete: 'current-password', required: true });
  const form = el('form', { class: 'card narrow', id: 'login-form', onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = '';
    const response = await fetch('/ui/login', { method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ key: input.value }) });
    input.value = '';
    const data = await response.json().catch(() => ({}));
    if (!response.ok) { error.textContent = data.detail || t('error.generic', { status: response.status }); input.focus(); return; }
    app.session = data;
    paintHeader();
    route();
  } },
  el('h1', { text: t('login.title') }),
  el('label', { for: 'login-key', text: t('login.key') }), input,
  el('p', { class: 'muted', text: t('login.help') }), error,
  el('button', { type: 'submit', id: 'login-submit', text: t('login.submit') }));
  render(++app.routeId, form);
  input.focus();
}

/* ---- overview ----------------------------------------------------------------------------- */

function stat(id, label, value, extra) {
  return el('div', { class: 'stat' }, el('div', { class: 'label', text: label }),
    el('div', { class: 'value', id, text: value }), extra || null);
}

function hourChart(hours) {
  const width = 480; const height = 120; const pad = 18;
  const max = Math.max(1, ...hours.map((h) => h.completed + h.failed + h.stopped));
  const svg = svgEl('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img',
    'aria-label': t('ov.per_hour') });
  const step = (width - pad) / hours.length;
  hours.forEach((hour, i) => {
    let y = height - pad;
    for (const [status, color] of [['completed', '#15803d'], ['failed', '#b91c1c'], ['stopped', '#a16207']]) {
      const h = ((height - 2 * pad) * hour[status]) / max;
      if (h > 0) {
        const rect = svgEl('rect', { x: pad + i * step + 1, y: y - h, width: Math.max(1, step - 2), height: h, fill: color });
        const title = svgEl('title', {});
        title.textContent = `${fmtDate(hour.hour)}: ${hour.completed} ${t('status.completed')}, ${hour.failed} ${t('status.failed')}, ${hour.stopped} ${t('status.stopped')}`;
        rect.append(title);
        svg.append(rect);
        y -= h;
      }
    }
  });
  const axis = svgEl('line', { x1: pad, x2: width, y1: height - pad, y2: height - pad, stroke: '#94a3b8' });
  const top = svgEl('text', { x: 0, y: pad, 'font-size': 10, fill: '#475569' });
  top.textContent = String(max);
  svg.append(axis, top);
  return svg;
}

function durationBars(durations) {
  const rows = Object.entries(durations).sort();
  if (!rows.length) return el('p', { class: 'muted', text: t('none') });
  const max = Math.max(...rows.map(([, d]) => d.p95 || 0), 0.001);
  return el('div', { class: 'table-wrap' }, el('table', { id: 'ov-durations' },
    el('thead', {}, el('tr', {}, ...[t('step'), t('count'), t('p50'), t('p95'), ''].map((h) => el('th', { text: h })))),
    el('tbody', {}, rows.map(([step, d]) => {
      const bar = el('div', { class: 'hbar' });
      const p50 = el('span', { class: 'p50' }); p50.style.width = `${(100 * (d.p50 || 0)) / max}%`;
      const p95 = el('span', { class: 'p95' }); p95.style.width = `${(100 * (d.p95 || 0)) / max}%`;
      bar.append(p95, p50);
      return el('tr', { 'data-step': step }, el('td', { text: step }), el('td', { class: 'num', text: fmtNumber(d.completed) }),
        el('td', { class: 'num', text: fmtSeconds(d.p50) }), el('td', { class: 'num', text: fmtSeconds(d.p95) }),
        el('td', { class: 'wide' }, bar));
    }))));
}

function describeSchedule(schedule) {
  const s = schedule.schedule || schedule;
  if (s && s.hour !== undefined && s.hour !== null) {
    return t('daily_at', { t: `${String(s.hour).padStart(2, '0')}:${String(s.minute || 0).padStart(2, '0')} (${s.timezone || 'UTC'})` });
  }
  const seconds = (s && s.interval_seconds) || schedule.interval_seconds;
  return seconds ? t('every', { n: fmtSeconds(seconds) }) : t('none');
}

function cleanupCard(schedule) {
  const result = el('p', { id: 'cleanup-result', role: 'status' });
  const ttl = schedule.ttl_hours ?? (schedule.ttl_seconds ? schedule.ttl_seconds / 3600 : null);
  const last = schedule.last_run || schedule.last || null;
  const card = el('section', { class: 'card', id: 'ov-cleanup' }, el('h2', { text: t('ov.cleanup') }),
    el('dl', { class: 'facts' },
      el('dt', { text: t('cleanup.ttl') }), el('dd', { text: ttl === null ? t('none') : t('hours', { n: fmtNumber(ttl, 1) }) }),
      el('dt', { text: t('cleanup.every') }), el('dd', { text: describeSchedule(schedule) }),
      el('dt', { text: t('cleanup.last') }), el('dd', { text: last ? fmtDate(last.at || last) : t('never') }),
      el('dt', { text: t('cleanup.next') }), el('dd', { text: fmtDate(schedule.next_run || schedule.next) }),
      el('dt', { text: t('cleanup.removed') }), el('dd', { text: last && last.removed !== undefined ? fmtNumber(last.removed) : t('none') })),
    result);
  if (can('admin')) {
    card.append(el('button', { type: 'button', id: 'cleanup-now', onclick: async (event) => {
      event.target.disabled = true;
      try {
        const outcome = await api('POST', '/cleanup/now');
        result.textContent = t('cleanup.done', { n: outcome.removed });
      } catch (error) { result.textContent = error.message; }
      event.target.disabled = false;
    } }, t('cleanup.now')));
  }
  return card;
}

async function overviewPage(token) {
  const [stats, health, schedule] = await Promise.all([api('GET', '/stats'), api('GET', '/health'),
    api('GET', '/cleanup/schedule')]);
  const cap = stats.capacity;
  const byStatus = stats.tasks.by_status;
  const wait = stats.queue_wait_seconds || {};
  if (!render(token,
    el('h1', { text: t('nav.overview') }),
    el('section', { class: 'cards' },
      stat('ov-running', t('ov.running'), `${fmtNumber(cap.running)} / ${fmtNumber(cap.max_concurrent_tasks)}`,
        progressBar((100 * cap.running) / cap.max_concurrent_tasks, t('ov.running'))),
      stat('ov-queued', t('ov.queued'), `${fmtNumber(cap.queued)} / ${fmtNumber(cap.max_queued_tasks)}`,
        progressBar(cap.max_queued_tasks ? (100 * cap.queued) / cap.max_queued_tasks : 0, t('ov.queued'))),
      stat('ov-success', t('ov.success'), stats.success_rate === null ? t('none') : `${fmtNumber(stats.success_rate * 100, 1)} %`),
      stat('ov-stored', t('ov.stored'), fmtNumber(stats.tasks.stored)),
      stat('ov-wait', t('ov.queue_wait'), `${t('p50')} ${fmtSeconds(wait.p50)} · ${t('p95')} ${fmtSeconds(wait.p95)}`)),
    el('section', { class: 'card' }, el('h2', { text: t('ov.by_status') }),
      el('ul', { class: 'status-counts', id: 'ov-by-status' }, Object.entries(byStatus).map(([status, n]) =>
        el('li', { 'data-status': status }, badge(status), el('span', { class: 'num', text: fmtNumber(n) }))))),
    el('section', { class: 'card' }, el('h2', { text: t('ov.per_hour') }), hourChart(stats.tasks_per_hour || [])),
    el('section', { class: 'card' }, el('h2', { text: t('ov.durations') }), durationBars(stats.duration_seconds)),
    el('div', { class: 'two' },
      el('section', { class: 'card', id: 'ov-health' }, el('h2', {}, t('ov.health'), ' ',
        el('span', { class: `badge ${health.status === 'ok' ? 's-completed' : 's-failed'}`, text: health.status })),
        el('ul', { class: 'checks' }, Object.entries(health.checks).map(([name, check]) =>
          el('li', { class: check.ok ? 'ok' : 'bad' }, el('strong', { text: `${check.ok ? '✓' : '✗'} ${name}` }), ' ', check.detail)))),
      el('section', { class: 'card' }, el('h2', { text: t('ov.workers') }),
        el('div', { class: 'table-wrap' }, el('table', { id: 'ov-workers' },
          el('thead', {}, el('tr', {}, ...[t('worker'), t('alive'), t('ov.running'), t('started_tasks')].map((h) => el('th', { text: h })))),
          el('tbody', {}, stats.workers.map((w) => el('tr', {}, el('td', { text: `${w.host}:${w.pid}` }),
            el('td', { text: w.alive ? t('yes') : t('no') }), el('td', { class: 'num', text: String(w.running) }),
            el('td', { class: 'num', text: fmtNumber(w.tasks_started) })))))))),
    cleanupCard(schedule))) return;
  let pending = null;
  const refresh = () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      if (location.hash.startsWith('#/overview') || location.hash === '' || location.hash === '#/') {
        const focused = document.activeElement && document.activeElement.id;
        await overviewPage(app.routeId);
        if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
      }
    }, 2000);
  };
  leavePage();
  stream('/events', { status: refresh });
  every(15000, refresh);
}

/* ---- tasks -------------------------------------------------------------------------------- */

function taskRow(task) {
  return el('tr', { 'data-task': task.task_id },
    el('td', {}, el('a', { href: `#/task/${task.task_id}`, class: 'mono', text: task.task_id.slice(0, 18) + '…' })),
    el('td', { text: task.step_name }),
    el('td', { class: 'st' }, badge(task.status)),
    el('td', { class: 'pr' }, progressBar(task.progress)),
    el('td', { text: fmtDate(task.created_at) }),
    el('td', { class: 'num', text: fmtSeconds(task.duration_seconds) }));
}

async function tasksPage(query, token) {
  const params = new URLSearchParams(query);
  const filters = { status: params.get('status') || '', step: params.get('step') || '',
    from: params.get('from') || '', until: params.get('until') || '' };
  const cursors = (params.get('trail') || '').split(',').filter(Boolean);
  const steps = await loadSteps();
  const api_query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (filters.status) api_query.set('status', filters.status);
  if (filters.step) api_query.set('step', filters.step);
  const cursor = cursors.length ? cursors[cursors.length - 1]
    : (filters.until ? idAtTime(new Date(`${filters.until}T23:59:59.999`).getTime()) : '');
  if (cursor) api_query.set('cursor', cursor);
  const page = await api('GET', `/tasks?${api_query}`);
  const fromMs = filters.from ? new Date(`${filters.from}T00:00:00`).getTime() : null;
  let tasks = page.tasks;
  let reachedFrom = false;
  if (fromMs !== null) {
    const kept = tasks.filter((task) => new Date(task.created_at).getTime() >= fromMs);
    reachedFrom = kept.length < tasks.length;
    tasks = kept;
  }
  const link = (extra) => {
    const next = new URLSearchParams();
    for (const [name, value] of Object.entries(filters)) if (value) next.set(name, value);
    for (const [name, value] of Object.entries(extra)) if (value) next.set(name, value);
    return `#/tasks?${next}`;
  };
  const select = (id, name, options, value) => el('select', { id, name },
    el('option', { value: '', text: t('filter.any') }),
    options.map((option) => el('option', { value: option, text: option, selected: option === value })));
  const form = el('form', { class: 'filters', id: 'task-filters', onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    location.hash = link({}).replace(/\?.*$/, '') + '?' + new URLSearchParams([...data].filter(([, v]) => v));
  } },
  el('label', {}, t('filter.status'), select('f-status', 'status', ['queued', 'running', 'completed', 'failed', 'stopped'], filters.status)),
  el('label', {}, t('filter.step'), select('f-step', 'step', Object.keys(steps), filters.step)),
  el('label', {}, t('filter.from'), el('input', { type: 'date', name: 'from', id: 'f-from', value: filters.from })),
  el('label', {}, t('filter.until'), el('input', { type: 'date', name: 'until', id: 'f-until', value: filters.until })),
  el('button', { type: 'submit', text: t('filter.apply') }));
  const body = el('tbody', {}, tasks.map(taskRow));
  const fresh = el('button', { type: 'button', class: 'secondary', id: 'new-tasks', hidden: true,
    onclick: () => { route(); } });
  const nav = el('nav', { class: 'pager', 'aria-label': 'pages' },
    cursors.length ? el('a', { href: link({ trail: cursors.slice(0, -1).join(',') }), id: 'page-newer', text: t('newer') }) : null,
    page.next_cursor && !reachedFrom ? el('a', { href: link({ trail: [...cursors, page.next_cursor].join(',') }), id: 'page-older', text: t('older') }) : null);
  const empty = el('p', { class: 'muted', id: 'no-tasks', text: t('no_tasks'), hidden: tasks.length > 0 });
  if (!render(token, el('h1', { text: t('tasks.title') }), form, fresh,
    el('div', { class: 'table-wrap' }, el('table', { id: 'task-table' },
      el('thead', {}, el('tr', {}, ...['col.task', 'task.step', 'col.status', 'col.progress', 'col.created', 'col.duration'].map((k) => el('th', { text: t(k) })))),
      body)), empty, nav)) return;
  leavePage();
  let added = 0;
  const onEvent = (event) => {
    const row = body.querySelector(`tr[data-task="${event.task_id}"]`);
    if (row) {
      row.querySelector('.st').replaceChildren(badge(event.status));
      setProgress(row.querySelector('.bar'), event.progress);
      return;
    }
    const matches = (!filters.status || filters.status === event.status) && (!filters.step || filters.step === event.step_name);
    if (!cursors.length && !filters.until && matches && event.kind !== 'progress') {
      if (event.status === 'queued' || event.status === 'running' || body.children.length < PAGE_SIZE) {
        body.prepend(taskRow({ ...event, created_at: createdFromId(event.task_id), duration_seconds: event.duration_seconds }));
        empty.hidden = true;
        while (body.children.length > PAGE_SIZE) body.lastChild.remove();
      } else {
        added += 1;
        fresh.hidden = false;
        fresh.textContent = t('live_new', { n: added });
      }
    }
  };
  stream('/events', { status: (e) => onEvent({ ...e, kind: 'status' }), progress: (e) => onEvent({ ...e, kind: 'progress' }) });
}

/* ---- one task ----------------------------------------------------------------------------- */

function who(by) {
  if (!by) return t('none');
  return `${by.name} (${by.role})${by.client ? ` · ${by.client}` : ''}`;
}

class LogView {
  /* The last LOG_LINES_SHOWN lines in one <pre>, repainted at most once per frame. */
  constructor(node, note) { this.node = node; this.note = note; this.lines = []; this.total = 0; this.scheduled = false; }

  add(lines, total) {
    this.lines.push(...lines);
    if (this.lines.length > LOG_LINES_SHOWN) this.lines.splice(0, this.lines.length - LOG_LINES_SHOWN);
    this.total = Math.max(total || 0, this.total + lines.length);
    if (!this.scheduled) { this.scheduled = true; requestAnimationFrame(() => this.paint()); }
  }

  paint() {
    this.scheduled = false;
    const atBottom = this.node.scrollHeight - this.node.scrollTop - this.node.clientHeight < 40;
    this.node.textContent = this.lines.join('\n');
    this.note.textContent = this.total > this.lines.length ? t('task.log_shown', { n: fmtNumber(this.lines.length), total: fmtNumber(this.total) }) : '';
    if (atBottom) this.node.scrollTop = this.node.scrollHeight;
  }
}

async function taskPage(taskId, token) {
  let task;
  try { task = await api('GET', `/status/${taskId}`); } catch (error) {
    if (error.status === 404) { render(token, el('h1', { text: t('task.title') }), el('p', { class: 'error', text: t('task.not_found') })); return; }
    throw error;
  }
  const statusBox = el('span', { id: 'task-status' }, badge(task.status));
  const bar = progressBar(task.progress);
  bar.id = 'task-progress';
  const message = el('p', { id: 'task-message', class: 'muted', text: task.message || '' });
  const facts = el('dl', { class: 'facts', id: 'task-facts' });
  const history = el('ol', { class: 'timeline', id: 'task-history' });
  const logNode = el('pre', { class: 'log', id: 'task-log', tabindex: '0', 'aria-label': t('task.log') });
  const logNote = el('p', { class: 'muted', id: 'task-log-note' });
  const log = new LogView(logNode, logNote);
  const outcome = el('section', { class: 'card', id: 'task-outcome', hidden: true });
  const actions = el('div', { class: 'actions' });
  const stopButton = el('button', { type: 'button', id: 'stop-button', class: 'danger', text: t('task.stop'), onclick: async () => {
    stopButton.disabled = true;
    stopButton.textContent = t('task.stopping');
    try { await api('POST', `/stop/${taskId}`); } catch (error) { message.textContent = error.message; stopButton.disabled = false; stopButton.textContent = t('task.stop'); }
  } });
  if (can('operator') && !TERMINAL.has(task.status) && !task.stop_requested) actions.append(stopButton);

  const paintFacts = (state) => {
    const rows = [['task.step', state.step_name], ['task.created', fmtDate(state.created_at)], ['task.started', fmtDate(state.started_at)],
      ['task.completed', fmtDate(state.completed_at)], ['task.duration', fmtSeconds(state.duration_seconds)],
      ['task.worker', state.worker ? `${state.worker.host}:${state.worker.pid}` : t('none')],
      ['task.requested_by', who(state.requested_by)], ['task.stopped_by', who(state.stopped_by)]];
    facts.replaceChildren(...rows.flatMap(([key, value]) => [el('dt', { text: t(key) }), el('dd', { id: `fact-${key.split('.')[1]}`, text: value })]));
    history.replaceChildren(...(state.history || []).map((entry) => el('li', {},
      badge(entry.status), ' ', el('time', { datetime: entry.at, text: fmtDate(entry.at) }), ' — ', entry.reason || '')));
  };
  const paintOutcome = async () => {
    let output;
    try { output = await api('GET', `/output/${taskId}`); } catch (_) { return; }
    const parts = [];
    if (output.status === 'completed') {
      parts.push(el('h2', { text: t('task.output') }), el('pre', { class: 'json', id: 'task-result', text: JSON.stringify(output.result, null, 2) }));
    } else if (output.error) {
      parts.push(el('h2', { text: t('task.error') }), el('p', { class: 'error', id: 'task-error', text: `${output.error.type}: ${output.error.message}` }));
      if (output.error.traceback) parts.push(el('details', {}, el('summary', { text: t('task.traceback') }), el('pre', { class: 'log', id: 'task-traceback', text: output.error.traceback })));
    } else {
      parts.push(el('h2', { text: t(`status.${output.status}`) }), el('p', { text: output.message || '' }));
    }
    if (output.artifacts && output.artifacts.length) {
      parts.push(el('h3', { text: t('task.artifacts') }), el('ul', { id: 'task-artifacts' }, output.artifacts.map((path) => el('li', { class: 'mono', text: path }))));
    }
    outcome.replaceChildren(...parts);
    outcome.hidden = false;
  };
  paintFacts(task);
  if (!render(token, el('h1', {}, t('task.title'), ' ', el('span', { class: 'mono small', text: taskId })),
    el('section', { class: 'card' }, el('div', { class: 'headline' }, statusBox, bar), message, actions, facts),
    outcome,
    el('section', { class: 'card' }, el('h2', { text: t('task.history') }), history),
    el('section', { class: 'card' }, el('h2', {}, t('task.log'), ' ',
      el('a', { href: `/ui/logs/${taskId}`, id: 'log-download', download: `${taskId}.log`, text: t('task.log_download') })), logNote, logNode))) return;
  const since = Math.max(0, (task.log_lines || 0) - LOG_LINES_SHOWN);
  const first = await api('GET', `/logs/${taskId}?since=${since}&limit=${LOG_LINES_SHOWN}`);
  log.add(first.lines, first.next);
  if (token !== app.routeId) return;
  leavePage();
  if (TERMINAL.has(task.status)) { paintOutcome(); return; }
  const onState = async (event) => {
    statusBox.replaceChildren(badge(event.status));
    setProgress(bar, event.progress);
    message.textContent = event.message || '';
    if (event.stop_requested || TERMINAL.has(event.status)) stopButton.remove();
    if (!event.snapshot) {
      const state = await api('GET', `/status/${taskId}`).catch(() => null);
      if (state) paintFacts(state);
    }
  };
  stream(`/events/${taskId}?since_line=${first.next}`, {
    status: onState,
    progress: (event) => { setProgress(bar, event.progress); message.textContent = event.message || ''; },
    log: (event) => log.add([event.text], event.line),
    end: async () => {
      const state = await api('GET', `/status/${taskId}`).catch(() => null);
      if (state) { paintFacts(state); statusBox.replaceChildren(badge(state.status)); setProgress(bar, state.progress); }
      paintOutcome();
    },
  });
}

/* ---- run a step --------------------------------------------------------------------------- */

async function loadSteps() {
  if (!app.steps) {
    const catalogue = await api('GET', '/steps');
    app.steps = Object.fromEntries(catalogue.steps.map((step) => [step.name, step]));
  }
  return app.steps;
}

function resolve(schema, root) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split('/').pop();
    return { ...(root.$defs || root.definitions || {})[name], ...schema, $ref: undefined };
  }
  if (schema && schema.anyOf) {
    const real = schema.anyOf.filter((option) => option.type !== 'null');
    if (real.length === 1) return { ...resolve(real[0], root), ...schema, anyOf: undefined, nullable: true };
  }
  return schema || {};
}

function fieldFor(name, raw, root, required) {
  const schema = resolve(raw, root);
  const id = `param-${name}`;
  const hint = el('small', { class: 'muted', text: schema.description || '' });
  const error = el('p', { class: 'field-error', id: `error-${name}`, role: 'alert' });
  let input;
  let read;
  if (schema.enum) {
    input = el('select', { id, name }, !required && schema.default === undefined ? el('option', { value: '', text: '' }) : null,
      schema.enum.map((value) => el('option', { value: String(value), text: String(value), selected: value === schema.default })));
    read = () => (input.value === '' ? undefined : schema.enum.find((value) => String(value) === input.value));
  } else if (schema.type === 'boolean') {
    input = el('input', { id, name, type: 'checkbox', checked: schema.default === true });
    read = () => input.checked;
  } else if (schema.type === 'integer' || schema.type === 'number') {
    input = el('input', { id, name, type: 'number', step: schema.type === 'integer' ? '1' : 'any', inputmode: 'decimal',
      value: schema.default ?? '', min: schema.minimum ?? schema.exclusiveMinimum, max: schema.maximum ?? schema.exclusiveMaximum });
    read = () => (input.value.trim() === '' ? undefined : Number(input.value));
  } else if (schema.type === 'string' || !schema.type) {
    if (schema.type === 'string') {
      input = el('input', { id, name, type: schema.format === 'date' ? 'date' : 'text', value: schema.default ?? '' });
      read = () => (input.value === '' ? undefined : input.value);
    }
  }
  if (!input) {
    input = el('textarea', { id, name, rows: '3', class: 'mono', placeholder: t('run.json_hint'),
      text: schema.default === undefined ? '' : JSON.stringify(schema.default) });
    read = () => {
      if (input.value.trim() === '') return undefined;
      try { return JSON.parse(input.value); } catch (_) { throw Object.assign(new Error(t('run.bad_json')), { field: name }); }
    };
  }
  input.setAttribute('aria-describedby', `error-${name}`);
  const label = el('label', { for: id }, schema.title || name, required ? el('span', { class: 'req', title: t('run.required'), text: ' *' }) : null);
  return { name, node: el('div', { class: 'field', 'data-field': name }, label, input, hint, error), read, error, input };
}

async function runPage(stepName, token) {
  if (!can('operator')) { render(token, el('h1', { text: t('run.title') }), el('p', { class: 'muted', id: 'run-denied', text: t('run.need_role') })); return; }
  const steps = await loadSteps();
  const names = Object.keys(steps).sort();
  const chooser = el('select', { id: 'run-step', onchange: (event) => { location.hash = `#/run/${event.target.value}`; } },
    el('option', { value: '', text: t('run.choose') }), names.map((name) => el('option', { value: name, text: `${name} — ${steps[name].title}`, selected: name === stepName })));
  const parts = [el('h1', { text: t('run.title') }), el('label', { for: 'run-step', text: t('run.step') }), chooser];
  const step = steps[stepName];
  if (step) {
    const schema = step.parameters || {};
    const required = new Set(schema.required || []);
    const fields = Object.entries(schema.properties || {}).map(([name, raw]) => fieldFor(name, raw, schema, required.has(name)));
    const top = el('div', { class: 'error', id: 'run-errors', role: 'alert' });
    const form = el('form', { id: 'run-form', class: 'card', novalidate: true, onsubmit: async (event) => {
      event.preventDefault();
      top.replaceChildren();
      for (const field of fields) { field.error.textContent = ''; field.input.removeAttribute('aria-invalid'); }
      const parameters = {};
      try {
        for (const field of fields) { const value = field.read(); if (value !== undefined) parameters[field.name] = value; }
      } catch (error) {
        const field = fields.find((f) => f.name === error.field);
        if (field) { field.error.textContent = error.message; field.input.focus(); }
        return;
      }
      const submit = form.querySelector('button[type=submit]');
      submit.disabled = true;
      try {
        const answer = await api('POST', `/run/${stepName}`, { parameters });
        location.hash = `#/task/${answer.task_id}`;
      } catch (error) {
        submit.disabled = false;
        const unplaced = [];
        for (const problem of (error.body && error.body.errors) || []) {
          const loc = problem.loc || [];
          const field = fields.find((f) => loc[0] === 'parameters' && loc[1] === f.name);
          if (field) { field.error.textContent = problem.msg; field.input.setAttribute('aria-invalid', 'true'); } else unplaced.push(`${problem.field}: ${problem.msg}`);
        }
        top.append(el('p', { text: error.status === 422 ? t('run.errors') : error.message }), ...unplaced.map((text) => el('p', { text })));
        const bad = fields.find((f) => f.error.textContent);
        (bad ? bad.input : top).focus();
      }
    } },
    el('h2', { text: step.title }), el('p', { class: 'muted', text: step.description || '' }), top,
    fields.map((field) => field.node),
    el('button', { type: 'submit', id: 'run-submit', text: t('run.submit') }));
    top.tabIndex = -1;
    parts.push(form);
  }
  render(token, ...parts);
}

/* ---- routing ------------------------------------------------------------------------------ */

async function route() {
  leavePage();
  if (!app.session) {
    await loadSession();
    if (!app.session) { showLogin(); return; }
  }
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query] = hash.split('?');
  const [page, arg] = path.split('/');
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.page === (page || 'overview')) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
  }
  const token = ++app.routeId;
  try {
    if (page === 'tasks') await tasksPage(query || '', token);
    else if (page === 'task' && arg) await taskPage(arg, token);
    else if (page === 'run') await runPage(arg || '', token);
    else await overviewPage(token);
  } catch (error) {
    if (error.status !== 401) render(token, el('p', { class: 'error', role: 'alert', text: error.message }));
  }
}

function start() {
  app.lang = pickLanguage();
  const chooser = document.getElementById('lang');
  chooser.value = app.lang;
  chooser.addEventListener('change', () => {
    app.lang = chooser.value;
    localStorage.setItem('etl.lang', app.lang);
    paintHeader();
    route();
  });
  document.getElementById('logout').addEventListener('click', async () => {
    await fetch('/ui/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': (app.session && app.session.csrf) || '' } });
    app.session = null;
    showLogin();
  });
  window.addEventListener('hashchange', route);
  route();
}

document.addEventListener('DOMContentLoaded', start);
