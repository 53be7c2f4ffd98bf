// Times file transfers through the official E2B JavaScript SDK (npm `e2b`, the version
// tests/compat/js pins), each beside Node's own fetch (the undici client the SDK is built
// on) against the plain servers; prints the samples as JSON. cove-bench runs it from
// tests/compat/js (where the SDK is installed) with E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY set, and passes the same JSON argument as to sdk_transfers.py.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Sandbox } from 'e2b'

const cfg = JSON.parse(process.argv[2])
const RUNS = cfg.runs
const REMOTE = '/tmp/cove-bench-js'
const RANDOM = new Uint8Array(readFileSync(join(cfg.dir, 'random.bin')))
const SMALL = []
for (let i = 0; i < cfg.small; i++) SMALL.push(new Uint8Array(readFileSync(join(cfg.dir, 'small', String(i)))))

const out = {}

function same(got, want, what) {
  if (got.length !== want.length || Buffer.compare(Buffer.from(got), Buffer.from(want)) !== 0) {
    throw new Error(`${what}: got ${got.length} bytes, expected ${want.length} (or other bytes)`)
  }
}

// Times two transfers run by turns (A B A B …, each once untimed first), so that a change in
// the machine's load or the process's heap over the run weighs on both alike.
async function paired(size, [keyA, actionA], [keyB, actionB], runs = RUNS) {
  await actionA()
  await actionB()
  const samples = { [keyA]: [], [keyB]: [] }
  for (let i = 0; i < runs; i++) {
    for (const [key, action] of [[keyA, actionA], [keyB, actionB]]) {
      const started = performance.now()
      await action()
      samples[key].push(size / ((performance.now() - started) / 1000))
    }
  }
  Object.assign(out, samples)
}

async function latencies(key, actions) {
  await actions[0]()
  const samples = []
  for (const action of actions) {
    const started = performance.now()
    await action()
    samples.push((performance.now() - started) / 1000)
  }
  out[key] = samples
}

async function streamed(stream) {
  const chunks = []
  for await (const chunk of stream) chunks.push(chunk)
  return Buffer.concat(chunks)
}

async function ok(response) {
  if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`)
  return response
}

function form(entries) {
  const body = new FormData()
  for (const [name, data] of entries) body.append('file', new Blob([data]), name)
  return body
}

const sandbox = await Sandbox.create()
try {
  const big = `${REMOTE}/random.bin`
  const paths = SMALL.map((_, i) => `${REMOTE}/small/${i}`)

  const plainRead = async () => ok(await fetch(`${cfg.plain_get}/random.bin`))
  await paired(RANDOM.length,
    ['sdk_write', () => sandbox.files.write(big, RANDOM)],
    ['plain_write', async () =>
      ok(await fetch(`${cfg.plain_post}/upload`, { method: 'POST', body: form([[big, RANDOM]]) }))])
  await paired(RANDOM.length,
    ['sdk_read_bytes', async () => same(await sandbox.files.read(big, { format: 'bytes' }), RANDOM, 'read')],
    ['plain_read_bytes', async () =>
      same(new Uint8Array(await (await plainRead()).arrayBuffer()), RANDOM, 'plain')])
  await paired(RANDOM.length,
    ['sdk_read_stream', async () =>
      same(await streamed(await sandbox.files.read(big, { format: 'stream' })), RANDOM, 'read stream')],
    ['plain_read_stream', async () => same(await streamed((await plainRead()).body), RANDOM, 'plain stream')])
  await latencies('sdk_small_write', paths.map((p, i) => () => sandbox.files.write(p, SMALL[i])))
  await latencies('sdk_small_read', paths.map((p, i) => async () =>
    same(await sandbox.files.read(p, { format: 'bytes' }), SMALL[i], 'small read')))
  await latencies('plain_small_write', paths.map((p, i) => async () =>
    ok(await fetch(`${cfg.plain_post}/upload`, { method: 'POST', body: form([[p, SMALL[i]]]) }))))
  await latencies('plain_small_read', SMALL.map((data, i) => async () =>
    same(new Uint8Array(await (await ok(await fetch(`${cfg.plain_get}/small/${i}`))).arrayBuffer()), data, 'plain small')))
} finally {
  await sandbox.kill()
}
console.log(JSON.stringify(out))
