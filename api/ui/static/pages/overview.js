/* The overview page: capacity, rates, durations, health, workers, cleanup. Shares the page's globals with app.js. */
'use strict';

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
