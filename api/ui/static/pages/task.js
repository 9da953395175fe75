/* One task's page: state, history, live log tail, outcome, Stop. Shares the page's globals with app.js. */
'use strict';

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
