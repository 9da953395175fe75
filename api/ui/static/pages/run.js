/* Running a step: a form generated from its parameters' JSON schema. Shares the page's globals with app.js. */
'use strict';

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
