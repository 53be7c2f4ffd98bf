# Stand-ins for what Nomad fills in when it places a task (`${node.unique.name}`,
# `${NOMAD_ADDR_http}`, `${meta.…}`), so that hcldec can evaluate the job files
# (scripts/validate-deploy). A job file that refers to another runtime value needs it here.
NOMAD_ADDR_http = "192.0.2.1:3000"
NOMAD_PORT_http = "3000"
node = {
  unique = {
    name = "client-1"
  }
}
meta = {
  cove_node = "true"
}
