// Pause, resume and fork with the official E2B JavaScript SDK against `cove serve` (the
// environment carries E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY).
// usage: node server-pause-fork.mjs
// Prints one JSON object with what the SDK saw, for the Python test to check.
import { Sandbox } from 'e2b'

const path = '/home/user/js.txt'
const sandbox = await Sandbox.create({ timeoutMs: 120_000 })
const created = [sandbox]
try {
  await sandbox.files.write(path, 'from js')
  const paused = await sandbox.pause()
  const pausedAgain = await sandbox.pause()
  const whilePaused = (await sandbox.getInfo()).state
  const listedPaused = (await Sandbox.list({ query: { state: ['paused'] } }).nextItems()).map(
    (s) => s.sandboxId,
  )
  const resumed = await Sandbox.connect(sandbox.sandboxId, { timeoutMs: 120_000 })
  const readAfterResume = await resumed.files.read(path)
  const afterResume = (await sandbox.getInfo()).state

  const forks = await sandbox.fork({ count: 2, timeoutMs: 60_000 })
  const started = forks.filter((f) => !(f instanceof Error))
  created.push(...started)
  const forkReads = await Promise.all(started.map((f) => f.files.read(path)))
  await started[0].files.write(path, 'fork 0')
  await started[1].files.write(path, 'fork 1')
  const afterWrites = await Promise.all([sandbox, ...started].map((s) => s.files.read(path)))
  console.log(
    JSON.stringify({
      sandboxId: sandbox.sandboxId,
      paused,
      pausedAgain,
      whilePaused,
      listedPaused: listedPaused.includes(sandbox.sandboxId),
      readAfterResume,
      afterResume,
      forkIds: started.map((f) => f.sandboxId),
      forkErrors: forks.filter((f) => f instanceof Error).map((e) => e.message),
      forkReads,
      afterWrites,
    }),
  )
} finally {
  for (const s of created) await s.kill()
}
