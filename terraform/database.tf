# The database side of the services: one Postgres role per service, the one-off
# bootstrap task that gives them their grants, and where each service's credentials come from.
# The role kinds and their grants are defined once, in churnops
# (code/churnops/monitoring/db_roles.py), which terraform/scripts/db_init.py runs.

locals {
  db_roles = {
    # The flow (worker): reads and writes the metrics tables, no DDL.
    flow = { name = "churnops_flow", kind = "writer", database = "metrics", scheme = "postgresql+psycopg2" }
    # Grafana: SELECT on the dashboards' tables only.
    grafana = { name = "grafana_ro", kind = "reader", database = "metrics", scheme = "postgresql+psycopg2" }
    # MLflow and Prefect: each owns its database and migrates it itself.
    # Explicit drivers: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, not installed.
    mlflow  = { name = "mlflow", kind = "owner", database = "mlflow", scheme = "postgresql+psycopg2" }
    prefect = { name = "prefect", kind = "owner", database = "prefect", scheme = "postgresql+asyncpg" }
  }

  # ECS `valueFrom` references to the URL in each role's secret: the URL (with the
  # password) is assembled in Secrets Manager, never in the plan or the state.
  db_url_secrets = {
    metrics = "${module.rds.roles.flow.secret_arn}:url::"
    mlflow  = "${module.rds.roles.mlflow.secret_arn}:url::"
    prefect = "${module.rds.roles.prefect.secret_arn}:url::"
  }

  # The database bootstrap: a one-off task (no ECS service) that `make apply` runs
  # (post_apply.py database) as the RDS master user: migrate the metrics database,
  # give each service's role its password and grants. Idempotent. Only its own
  # execution role reads the master secret; it runs no customer file.
  db_bootstrap_order = ["flow", "grafana", "mlflow", "prefect"]
  db_bootstrap = {
    image   = local.images.orchestration
    one_off = true
    cpu     = 256
    memory  = 512
    command = ["python", "-c", file("${path.module}/scripts/db_init.py")]
    environment = {
      DB_HOST           = module.rds.address
      DB_PORT           = tostring(module.rds.port)
      DB_ADMIN_DATABASE = module.rds.initial_database
      PGSSLMODE         = "require"
      DB_ROLES = jsonencode([
        for key in local.db_bootstrap_order : {
          key      = key
          kind     = module.rds.roles[key].kind
          name     = module.rds.roles[key].name
          database = module.rds.roles[key].database
        }
      ])
    }
    secrets = merge(
      {
        DB_ADMIN_USER     = "${module.rds.master_secret_arn}:username::"
        DB_ADMIN_PASSWORD = "${module.rds.master_secret_arn}:password::"
      },
      { for key in local.db_bootstrap_order : "DB_PASSWORD_${upper(key)}" => "${module.rds.roles[key].secret_arn}:password::" },
    )
  }
}
