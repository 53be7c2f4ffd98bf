// A tiny OCI image layout, as a tar, made here (no registry, no download): one layer with
// one file. Enough to import a template and build on it with steps that need no shell.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function tinyLayoutTar(text) {
  const work = mkdtempSync(join(tmpdir(), 'cove-ui-oci-'));
  try {
    const rootfs = join(work, 'rootfs');
    const layout = join(work, 'layout');
    const blobs = join(layout, 'blobs', 'sha256');
    mkdirSync(join(rootfs, 'etc'), { recursive: true });
    mkdirSync(blobs, { recursive: true });
    writeFileSync(join(rootfs, 'etc', 'demo.txt'), text);
    const blob = (bytes) => {
      const digest = createHash('sha256').update(bytes).digest('hex');
      writeFileSync(join(blobs, digest), bytes);
      return { digest: `sha256:${digest}`, size: bytes.length };
    };
    execFileSync('tar', ['-C', rootfs, '--owner=0', '--group=0', '-cf', join(work, 'layer.tar'), '.']);
    const layer = blob(readFileSync(join(work, 'layer.tar')));
    const config = blob(Buffer.from(JSON.stringify({
      architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [layer.digest] },
    })));
    const manifest = blob(Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
    })));
    writeFileSync(join(layout, 'index.json'), JSON.stringify({
      schemaVersion: 2,
      manifests: [{
        mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest,
        annotations: { 'org.opencontainers.image.ref.name': 'latest' },
      }],
    }));
    writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    return execFileSync('tar', ['-C', layout, '-cf', '-', '.'], { maxBuffer: 1 << 24 });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
