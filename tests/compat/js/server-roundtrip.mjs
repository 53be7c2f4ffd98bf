// Drives `cove serve` with the official E2B JavaScript SDK as a user would: the environment
// carries E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY (no E2B_DEBUG).
// usage: node server-roundtrip.mjs PATH CONTENT
// Prints one JSON object with what the SDK saw, for the Python test to check.
import { Sandbox } from 'e2b'

const [path, content] = process.argv.slice(2)
if (!path || content === undefined) {
  console.error('usage: node server-roundtrip.mjs PATH CONTENT')
  process.exit(2)
}

const sandbox = await Sandbox.create({ metadata: { from: 'js' }, envs: { FROM_CREATE: 'yes' } })
let killed = false
try {
  const written = await sandbox.files.write(path, content)
  const readBack = await sandbox.files.read(path)
  const command = await sandbox.commands.run(`wc -c < '${path}' && id -un && echo $FROM_CREATE`)
  const info = await sandbox.getInfo()
  const listed = await Sandbox.list({ query: { metadata: { from: 'js' } } }).nextItems()
  const runningBefore = await sandbox.isRunning()

  killed = await sandbox.kill()
  console.log(JSON.stringify({
    sandboxId: sandbox.sandboxId,
    written: { name: written.name, path: written.path, type: written.type },
    readBack,
    stdout: command.stdout,
    exitCode: command.exitCode,
    info: { sandboxId: info.sandboxId, templateId: info.templateId, metadata: info.metadata, state: info.state },
    listed: listed.map((s) => s.sandboxId),
    runningBefore,
    killed,
    runningAfter: await sandbox.isRunning(),
    killedAgain: await Sandbox.kill(sandbox.sandboxId),
  }))
} finally {
  if (!killed) await sandbox.kill()
}
