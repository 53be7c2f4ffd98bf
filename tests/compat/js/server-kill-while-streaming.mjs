// Kills a sandbox while `commands.run('sleep 60', { background: true }).wait()` streams, with
// the official E2B JavaScript SDK as a user would (E2B_API_URL etc. in the environment).
// Prints one JSON object with what wait() threw, for the Python test to check.
import { Sandbox } from 'e2b'

const sandbox = await Sandbox.create()
let killed = false
try {
  const handle = await sandbox.commands.run('sleep 60', { background: true })
  const waiting = handle.wait().then(
    (result) => ({ result }),
    (error) => ({ error: { name: error.constructor.name, message: String(error.message) } }),
  )
  killed = await sandbox.kill()
  console.log(JSON.stringify({ killed, ...(await waiting) }))
} finally {
  if (!killed) await sandbox.kill()
}
