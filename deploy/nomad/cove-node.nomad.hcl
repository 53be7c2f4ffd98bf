# The nodes: one `cove serve --role node` on every Nomad client of the datacenters below
# that is marked for it (docs/CLUSTER.md, "Running it on Kubernetes or Nomad").
#
#   nomad var put nomad/jobs/cove-node database='postgres://cove:…@db.internal:5432/cove'
#   nomad job run deploy/nomad/cove-node.nomad.hcl
#
# Nomad runs one job per file and a job has one type: the nodes are this system job, the
# api and the edge the service job in cove.nomad.hcl.
job "cove-node" {
  datacenters = ["dc1"]
  type        = "system"

  # The clients that run sandboxes set `meta { cove_node = "true" }` in their agent
  # configuration, and enable raw_exec (below).
  constraint {
    attribute = "${meta.cove_node}"
    value     = "true"
  }

  group "node" {
    network {
      # The node listens on the machine's own address: the api and the edge connect to it
      # there (COVE_ADVERTISE), and sandboxes' network helpers use the machine's network.
      port "http" {
        static = 3000
      }
    }

    service {
      name     = "cove-node"
      provider = "nomad"
      port     = "http"

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # A node that exits is started again in place (the sandboxes it left are taken over).
    restart {
      attempts = 10
      interval = "10m"
      delay    = "10s"
      mode     = "delay"
    }

    task "cove" {
      # raw_exec, not exec: the node is a privileged host process, as under systemd
      # (dist/cove.service). It runs as root in the machine's namespaces and sees the
      # machine's /dev (loop devices), /sys/fs/cgroup and /run/cove. exec would put it in
      # a chroot, a PID namespace and a cgroup of its own, where sandboxes die with the task
      # (and a new task could not take them over by PID); that breaks restarts that keep
      # sandboxes. raw_exec must be enabled on these clients:
      #   plugin "raw_exec" { config { enabled = true } }
      driver = "raw_exec"

      config {
        # The binary installed on the machine (docs/OPERATIONS.md, "Running under systemd",
        # with `scripts/setup --system` for the packages sandboxes use).
        command = "/usr/local/bin/cove"
        # Never --kill-on-exit: a restart (an upgrade) keeps the sandboxes running.
        args = ["serve"]
      }

      env {
        COVE_ROLE      = "node"
        # The node id is the client's name: stable across restarts, which is how a new
        # process takes over the sandboxes the last one left.
        COVE_NODE_ID   = "${node.unique.name}"
        COVE_ADVERTISE = "http://${NOMAD_ADDR_http}"
        COVE_LISTEN    = "0.0.0.0:${NOMAD_PORT_http}"
        # The edge's domain: the hosts that nodes' answers name are the edge's.
        COVE_DOMAIN     = "sandboxes.example.com"
        COVE_STATE_DIR  = "/var/lib/cove"
        COVE_LOG_FORMAT = "json"
      }

      # The database URL from Nomad Variables; noop: a new URL waits for the node's next
      # (drained) restart rather than restarting it at once.
      template {
        destination = "secrets/database.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
          COVE_DATABASE={{ with nomadVar "nomad/jobs/cove-node" }}{{ .database }}{{ end }}
        EOT
      }

      # The node process stops cleanly (marking itself down) on SIGTERM.
      kill_signal  = "SIGTERM"
      kill_timeout = "60s"

      # What the scheduler reserves for the node process; sandboxes have their own cgroups
      # and limits, outside the task's.
      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
