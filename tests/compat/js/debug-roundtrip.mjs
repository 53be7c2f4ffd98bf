// Drives the Cove agent with the official E2B JavaScript SDK in debug mode
// (E2B_DEBUG=true: all sandbox traffic goes to http://localhost:49983, no control plane).
// usage: node debug-roundtrip.mjs PATH CONTENT
// Prints one JSON object with what the SDK saw, for the Python test to check.
import { Sandbox } from 'e2b'

const [path, content] = process.argv.slice(2)
if (!path || content === undefined) {
  console.error('usage: node debug-roundtrip.mjs PATH CONTENT')
  process.exit(2)
}

const sandbox = await Sandbox.create()
const written = await sandbox.files.write(path, content)
const readBack = await sandbox.files.read(path)
const command = await sandbox.commands.run(`wc -c < '${path}' && id -un`)

console.log(JSON.stringify({
  written: { name: written.name, path: written.path, type: written.type },
  readBack,
  stdout: command.stdout,
  exitCode: command.exitCode,
}))
