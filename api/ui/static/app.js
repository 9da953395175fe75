/* The dashboard: plain JavaScript, no build step. Reads the same API as scripts do; the browser
   authenticates with the HttpOnly session cookie (never with the key) and sends the CSRF token
   on state-changing requests. Live updates come from the SSE streams (/events, /events/{id}).
   This file holds what every page shares and the routing; each page is in pages/. */
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
