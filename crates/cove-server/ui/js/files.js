// The sandbox's file tree, through its agent's filesystem API on the proxy (with the
// sandbox's access token): browse directories, download a file, upload by dropping files on
// a directory (or with the file picker, for the keyboard).

import { agent, rpc } from './api.js';
import { bytes, fill, h, say } from './dom.js';

const HOME = '/home/user';

async function list(sandbox, path) {
  const answer = await rpc(sandbox, 'filesystem.Filesystem/ListDir', { path, depth: 1 });
  const entries = answer.entries || [];
  const isDir = (e) => e.type === 'FILE_TYPE_DIRECTORY';
  return entries.sort((a, b) => (isDir(b) - isDir(a)) || a.name.localeCompare(b.name));
}

async function upload(sandbox, dir, files) {
  for (const file of files) {
    const path = `${dir.replace(/\/$/, '')}/${file.name}`;
    const form = new FormData();
    form.append('file', file, file.name);
    const query = new URLSearchParams({ path, username: 'user' });
    await agent(sandbox, `/files?${query}`, { method: 'POST', body: form });
  }
}

async function download(sandbox, path, name) {
  const query = new URLSearchParams({ path, username: 'user' });
  const response = await agent(sandbox, `/files?${query}`);
  const url = URL.createObjectURL(await response.blob());
  const link = h('a', { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export function render(container, sandbox) {
  let target = HOME;
  const where = h('span', { class: 'mono', id: 'upload-target' }, target);
  const picker = h('input', { type: 'file', id: 'upload-input', multiple: true, hidden: true });
  const tree = h('ul', { class: 'tree root', 'aria-label': 'Files' });
  const drop = h('div', { class: 'drop', id: 'file-drop' }, tree);

  async function send(files) {
    if (!files.length) return;
    try {
      await upload(sandbox, target, files);
      say(`Uploaded ${files.length} file${files.length > 1 ? 's' : ''} to ${target}`, 'info');
      await reload();
    } catch (err) {
      say(`Upload failed: ${err.message}`);
    }
  }

  picker.addEventListener('change', () => {
    send([...picker.files]);
    picker.value = '';
  });
  drop.addEventListener('dragover', (event) => {
    event.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    // Dropped on a directory's line: into it; elsewhere: into the chosen directory.
    const dir = event.target.closest && event.target.closest('[data-dir]');
    if (dir) choose(dir.dataset.dir);
    send([...event.dataTransfer.files]);
  });

  function choose(path) {
    target = path;
    where.textContent = path;
  }

  function item(entry) {
    const isDir = entry.type === 'FILE_TYPE_DIRECTORY';
    if (!isDir) {
      return h('li', { dataset: { path: entry.path } },
        h('button', { type: 'button', class: 'link', 'aria-label': `Download ${entry.path}`, onclick: () => download(sandbox, entry.path, entry.name).catch((err) => say(`Download failed: ${err.message}`)) }, entry.name),
        h('span', { class: 'size' }, bytes(Number(entry.size))));
    }
    const children = h('ul', { class: 'tree', hidden: true });
    const toggle = h('button', { type: 'button', class: 'link', 'aria-expanded': 'false' }, `${entry.name}/`);
    const li = h('li', { dataset: { dir: entry.path, path: entry.path } }, toggle, children);
    toggle.addEventListener('click', async () => {
      const open = toggle.getAttribute('aria-expanded') === 'true';
      choose(entry.path);
      if (open) {
        toggle.setAttribute('aria-expanded', 'false');
        children.hidden = true;
        return;
      }
      try {
        fill(children, ...(await list(sandbox, entry.path)).map(item));
        toggle.setAttribute('aria-expanded', 'true');
        children.hidden = false;
      } catch (err) {
        say(`Cannot list ${entry.path}: ${err.message}`);
      }
    });
    return li;
  }

  async function reload() {
    try {
      fill(tree, ...(await list(sandbox, HOME)).map(item));
      tree.dataset.loaded = 'true';
    } catch (err) {
      say(`Cannot list ${HOME}: ${err.message}`);
    }
  }

  fill(container,
    h('div', { class: 'toolbar' },
      h('button', { type: 'button', onclick: () => reload() }, 'Refresh'),
      h('button', { type: 'button', onclick: () => picker.click() }, 'Choose files to upload'),
      h('button', { type: 'button', onclick: () => choose(HOME) }, 'Upload to home'),
      picker,
      h('span', { class: 'hint' }, 'Drop files on a directory to upload them there; target: ', where)),
    h('p', { class: 'hint mono' }, HOME),
    drop);
  reload();
  return reload;
}
