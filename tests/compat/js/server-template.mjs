// Builds a template with the official E2B JavaScript SDK against `cove serve` (the environment
// carries E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY), then runs a sandbox of it.
// usage: node server-template.mjs NAME
// Prints one JSON object with what the SDK saw, for the Python test to check.
import { Sandbox, Template } from 'e2b'

const [name] = process.argv.slice(2)
if (!name) {
  console.error('usage: node server-template.mjs NAME')
  process.exit(2)
}

const template = Template()
  .fromPythonImage('3.12')
  .setEnvs({ BUILT_BY: 'js' })
  .runCmd('echo "built by $BUILT_BY" > /home/user/js.txt')
  .setUser('user')

await Template.build(template, name, { onBuildLogs: (entry) => console.error(entry.toString()) })
const exists = await Template.exists(name)
const sandbox = await Sandbox.create(name)
try {
  const command = await sandbox.commands.run('cat /home/user/js.txt && whoami')
  console.log(JSON.stringify({ name, stdout: command.stdout, exists }))
} finally {
  await sandbox.kill()
}
