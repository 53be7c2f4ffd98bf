# The api (the cluster's REST API, clients' E2B_API_URL) and the edge (the sandbox traffic,
# clients' E2B_SANDBOX_URL): stateless, any number of each (docs/CLUSTER.md, "Running it on
# Kubernetes or Nomad"). The nodes are the system job in cove-node.nomad.hcl.
#
#   nomad var put nomad/jobs/cove database='postgres://cove:…@db.internal:5432/cove'
#   nomad job run deploy/nomad/cove.nomad.hcl
#
# Each instance gets a dynamic port and is registered in Nomad's service catalogue as
# cove-api or cove-edge; put the load balancer that clients reach (with a wildcard name
# `*.DOMAIN` for the edge, and TLS) in front, fed from the catalogue.
job "cove" {
  datacenters = ["dc1"]
  type        = "service"

  # One instance at a time, replaced only once the new one answers /health.
  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "3m"
    auto_revert      = true
  }

  group "api" {
    count = 2

    network {
      port "http" {}
    }

    service {
      name     = "cove-api"
      provider = "nomad"
      port     = "http"

      # /health does not look at PostgreSQL: an outage restarts nothing.
      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "cove" {
      # exec: no privileges needed, so the api runs isolated (chroot, its own PID namespace
      # and cgroup) as an unprivileged user.
      driver = "exec"
      user   = "nobody"

      config {
        command = "/usr/local/bin/cove"
        args    = ["serve"]
      }

      env {
        COVE_ROLE       = "api"
        COVE_LISTEN     = "${NOMAD_ADDR_http}"
        COVE_LOG_FORMAT = "json"
      }

      template {
        destination = "secrets/database.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          COVE_DATABASE={{ with nomadVar "nomad/jobs/cove" }}{{ .database }}{{ end }}
        EOT
      }

      resources {
        cpu    = 200
        memory = 512
      }
    }
  }

  group "edge" {
    count = 2

    network {
      port "http" {}
    }

    service {
      name     = "cove-edge"
      provider = "nomad"
      port     = "http"

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "cove" {
      driver = "exec"
      user   = "nobody"

      config {
        command = "/usr/local/bin/cove"
        args    = ["serve"]
      }

      env {
        COVE_ROLE   = "edge"
        COVE_LISTEN = "${NOMAD_ADDR_http}"
        # The hosts sandboxes are reached at: `{port}-{sandboxID}.DOMAIN`, the same value as
        # the nodes' COVE_DOMAIN.
        COVE_DOMAIN     = "sandboxes.example.com"
        COVE_LOG_FORMAT = "json"
      }

      template {
        destination = "secrets/database.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          COVE_DATABASE={{ with nomadVar "nomad/jobs/cove" }}{{ .database }}{{ end }}
        EOT
      }

      resources {
        cpu    = 200
        memory = 512
      }
    }
  }
}
