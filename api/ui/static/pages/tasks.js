/* The tasks page: filters, pages, live rows. Shares the page's globals with app.js. */
'use strict';

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
